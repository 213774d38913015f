"""A small site for the browser tests, as a plain WSGI app and a plain ASGI app.

Both sit behind posthog_identity's `IdentityMiddleware`, configured from the
environment, and answer the same routes from one function, `handle`:

- ``GET /`` and ``GET /capture``: a page that names who is signed in; ``/capture``
  also captures "Server Page Viewed" server-side, in the page's own request;
- ``GET /login``: the login form; ``POST /login`` (``name``, ``next``) signs the
  name in (the site's session cookie, and `identify_user`), then redirects;
- ``POST /logout`` (``next``): signs out (`forget_user`), then redirects;
- ``GET /csp``: a page whose Content-Security-Policy allows scripts by nonce only
  (``'strict-dynamic'``), with an inline script of its own under that nonce;
  ``?canary=1`` adds an inline script without the nonce, which the policy blocks;
- ``GET /stream``: a page streamed in small pieces, ``</head>`` split across two;
- ``GET /nohead``: a page that opens ``<head>`` but never closes it;
- ``GET /fetching``: a page whose script, once posthog-js has patched ``fetch``,
  calls ``GET /server-step`` of the same site, which captures "Server Step";
- ``GET /whoami``: the middleware's identity as JSON (the servers' readiness probe).

A page's forms lead to ``/capture?step=<then>`` when the page has a ``then``
query parameter (else to ``next``, else home). Who is signed in comes from the
site's own session cookie (``e2e_session``,
signed with itsdangerous), read by the ``user_id`` callback. Every page shows
a ``step`` query parameter and the server captures carry it, so a test can tell
which page load an event came from. The browser's user agent ends with a
``PHIdentityE2E/<tag>`` token naming the test's browser: server captures copy
the tag into ``e2e_browser`` (posthog-js events carry the whole user agent).
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote

import posthog
from itsdangerous import BadSignature, URLSafeSerializer
from werkzeug.http import dump_cookie, parse_cookie

from posthog_identity import current_identity, forget_user, identify_user
from posthog_identity.asgi import IdentityMiddleware as ASGIIdentityMiddleware
from posthog_identity.settings import Settings
from posthog_identity.wsgi import IdentityMiddleware as WSGIIdentityMiddleware
from tests.sites.basic import serve_lifespan

SESSION_COOKIE = "e2e_session"
#: The site's own secret (not the identity cookie's): it signs the session cookie.
_SESSION = URLSafeSerializer("e2e-site-session-secret", salt="e2e-site-session")
_TAG = re.compile(r"PHIdentityE2E/([0-9a-f]+)")
#: A pause between the streamed page's pieces, so they leave as separate writes.
STREAM_PAUSE = 0.02

HTML = "text/html; charset=utf-8"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    cookies: dict[str, str]
    user_agent: str
    form: dict[str, str] = field(default_factory=dict)


@dataclass
class Response:
    status: str
    headers: list[tuple[str, str]]
    #: One piece, or several that leave as separate writes (no Content-Length).
    body: bytes | tuple[bytes, ...]


def session_user(cookies: dict[str, str]) -> str | None:
    """The name the site's session cookie says is signed in, if it verifies."""
    value = cookies.get(SESSION_COOKIE)
    if not value:
        return None
    try:
        user = _SESSION.loads(value)
    except BadSignature:
        return None
    return user if isinstance(user, str) and user else None


def _page(request: Request, title: str, *, head: bool = True, extra: str = "") -> str:
    user = session_user(request.cookies)
    step = html.escape(request.query.get("step", ""))
    if user is None:
        who = "Anonymous visitor"
        account = '<a id="login-link" href="/login">Log in</a>'
    else:
        who = f"Signed in as {html.escape(user)}"
        account = (
            '<form method="post" action="/logout">'
            f'<input type="hidden" name="next" value="{html.escape(_after(request))}">'
            '<button id="logout" type="submit">Log out</button></form>'
        )
    head_close = "</head>" if head else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{html.escape(title)}</title>\n{head_close}\n<body>\n"
        f'<h1 id="title">{html.escape(title)}</h1>\n'
        f'<p id="who">{who}</p>\n<p id="step">{step}</p>\n{account}\n{extra}\n'
        '<nav><a href="/">Home</a> <a href="/capture">Capture</a></nav>\n'
        "</body>\n</html>\n"
    )


def _html(text: str, *headers: tuple[str, str]) -> Response:
    return Response("200 OK", [("Content-Type", HTML), *headers], text.encode())


def _redirect(target: str, *headers: tuple[str, str]) -> Response:
    # Only a path on this site: never an open redirect.
    location = target if target.startswith("/") and not target.startswith("//") else "/"
    return Response(
        "303 See Other",
        [("Location", location), ("Content-Type", "text/plain; charset=utf-8"), *headers],
        b"see other",
    )


def _session_cookie(user: str | None) -> tuple[str, str]:
    if user is None:
        value = dump_cookie(SESSION_COOKIE, "", max_age=0, path="/", httponly=True)
    else:
        value = dump_cookie(
            SESSION_COOKIE, _SESSION.dumps(user), path="/", httponly=True, samesite="Lax"
        )
    return ("Set-Cookie", value)


def _after(request: Request) -> str:
    """Where the page's forms lead: ``/capture?step=<then>``, else ``next``, else home."""
    then = request.query.get("then")
    if then is not None:
        return f"/capture?step={quote(then)}"
    return request.query.get("next", "/")


def _login_form(request: Request) -> Response:
    following = html.escape(_after(request))
    form = (
        '<form method="post" action="/login">'
        '<label>Name <input id="name" name="name" autocomplete="off"></label>'
        f'<input type="hidden" name="next" value="{following}">'
        '<button id="login" type="submit">Log in</button></form>'
    )
    return _html(_page(request, "Log in", extra=form))


def _csp_page(request: Request) -> Response:
    nonce = secrets.token_urlsafe(16)
    policy = (
        f"script-src 'nonce-{nonce}' 'strict-dynamic' 'report-sample'; "
        "object-src 'none'; base-uri 'none'"
    )
    own = (
        f'<p id="inline">inline script blocked</p><script nonce="{nonce}">'
        "document.getElementById('inline').textContent='inline script ran';</script>"
    )
    if "canary" in request.query:
        # No nonce: the policy must block it, and the test must see that violation.
        own += "<script>document.title='csp canary ran';</script>"
    return _html(_page(request, "CSP", extra=own), ("Content-Security-Policy", policy))


def _streamed_page(request: Request) -> Response:
    document = _page(request, "Streamed").encode()
    cut = document.index(b"</head>") + 3  # `...</h` | `ead>...`
    pieces = _split(document[:cut], 40) + _split(document[cut:], 40)
    return Response("200 OK", [("Content-Type", HTML)], pieces)


def _split(data: bytes, size: int) -> tuple[bytes, ...]:
    return tuple(data[i : i + size] for i in range(0, len(data), size))


def _fetching_script(request: Request) -> str:
    """Calls /server-step once posthog-js has loaded its tracing headers (lazily)."""
    step = json.dumps(request.query.get("step", ""))
    return (
        '<p id="fetched">waiting</p><script>(function go(n){'
        "var x=window.__PosthogExtensions__;"
        "if(!(x&&x.tracingHeadersPatchFns)&&n<400){return setTimeout(function(){go(n+1);},25);}"
        f"fetch('/server-step?step='+encodeURIComponent({step}))"
        ".then(function(r){return r.text();})"
        ".then(function(t){document.getElementById('fetched').textContent=t;});"
        "})(0);</script>"
    )


def _whoami() -> Response:
    identity = current_identity()
    data: dict[str, Any] = {"identity": None}
    if identity is not None:
        data["identity"] = {
            "distinct_id": identity.distinct_id,
            "anonymous_id": identity.anonymous_id,
            "user_id": identity.user_id,
        }
    return Response("200 OK", [("Content-Type", "application/json")], json.dumps(data).encode())


def handle(request: Request, client: posthog.Client) -> Response:
    """The site's logic, shared by both protocol front ends."""
    path, method = request.path, request.method
    if path == "/login" and method == "POST":
        name = request.form.get("name", "").strip()
        if not name:
            return _login_form(request)
        identify_user(name)
        return _redirect(request.form.get("next", "/"), _session_cookie(name))
    if path == "/logout" and method == "POST":
        forget_user()
        return _redirect(request.form.get("next", "/"), _session_cookie(None))
    if method not in ("GET", "HEAD"):
        return Response("405 Method Not Allowed", [("Allow", "GET, HEAD")], b"")
    if path == "/":
        return _html(_page(request, "Home"))
    if path == "/capture":
        tag = _TAG.search(request.user_agent)
        client.capture(
            "Server Page Viewed",
            properties={"step": request.query.get("step", ""), "e2e_browser": tag and tag[1]},
        )
        return _html(_page(request, "Captured"))
    if path == "/login":
        return _login_form(request)
    if path == "/csp":
        return _csp_page(request)
    if path == "/stream":
        return _streamed_page(request)
    if path == "/nohead":
        return _html(_page(request, "No head end", head=False))
    if path == "/fetching":
        return _html(_page(request, "Fetching", extra=_fetching_script(request)))
    if path == "/server-step":
        tag = _TAG.search(request.user_agent)
        step = request.query.get("step", "")
        client.capture("Server Step", properties={"step": step, "e2e_browser": tag and tag[1]})
        return Response("200 OK", [("Content-Type", "application/json")], b'{"ok": true}')
    if path == "/whoami":
        return _whoami()
    return Response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")], b"")


def _form(body: bytes) -> dict[str, str]:
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def make_wsgi_app(client: posthog.Client) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        form: dict[str, str] = {}
        if environ["REQUEST_METHOD"] == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            form = _form(environ["wsgi.input"].read(length))
        request = Request(
            method=environ["REQUEST_METHOD"],
            path=environ.get("PATH_INFO") or "/",
            query=dict(parse_qsl(environ.get("QUERY_STRING", ""))),
            cookies=dict(parse_cookie(environ.get("HTTP_COOKIE", ""))),
            user_agent=environ.get("HTTP_USER_AGENT", ""),
            form=form,
        )
        response = handle(request, client)
        start_response(response.status, response.headers)
        if isinstance(response.body, bytes):
            return [response.body]

        def pieces(body: tuple[bytes, ...]) -> Iterator[bytes]:
            for piece in body:
                yield piece
                time.sleep(STREAM_PAUSE)

        return pieces(response.body)

    return app


def _asgi_headers(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


def make_asgi_app(client: posthog.Client) -> Callable[..., Any]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = _asgi_headers(scope)
        request = Request(
            method=scope["method"],
            path=scope["path"],
            query=dict(parse_qsl(scope["query_string"].decode("latin-1"))),
            cookies=dict(parse_cookie(headers.get("cookie", ""))),
            user_agent=headers.get("user-agent", ""),
            form=_form(body) if scope["method"] == "POST" else {},
        )
        response = handle(request, client)
        status = int(response.status.split()[0])
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.lower().encode(), v.encode()) for k, v in response.headers],
            }
        )
        async for piece in _pieces(response.body):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


async def _pieces(body: bytes | tuple[bytes, ...]) -> AsyncIterator[bytes]:
    if isinstance(body, bytes):
        yield body
        return
    for piece in body:
        yield piece
        await asyncio.sleep(STREAM_PAUSE)


def wsgi_user(environ: dict[str, Any]) -> str | None:
    return session_user(dict(parse_cookie(environ.get("HTTP_COOKIE", ""))))


def asgi_user(scope: dict[str, Any]) -> str | None:
    return session_user(dict(parse_cookie(_asgi_headers(scope).get("cookie", ""))))


def _client(settings: Settings) -> posthog.Client:
    # Passed to the middleware too: one client, one sending thread, so the
    # server's events reach the sink in the order they were captured.
    return posthog.Client(settings.api_key or "", host=settings.host, flush_interval=0.05)


def wsgi_factory() -> Any:
    """For gunicorn: ``'tests.sites.browser:wsgi_factory()'``, configured by environment."""
    settings = Settings.from_env()
    client = _client(settings)
    return WSGIIdentityMiddleware(make_wsgi_app(client), settings, user_id=wsgi_user, client=client)


def asgi_factory() -> Any:
    """For uvicorn: ``--factory tests.sites.browser:asgi_factory``, configured by environment."""
    settings = Settings.from_env()
    client = _client(settings)
    return ASGIIdentityMiddleware(make_asgi_app(client), settings, user_id=asgi_user, client=client)
