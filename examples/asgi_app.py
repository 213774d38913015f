"""A plain ASGI site (scope, receive and send; no framework) wired with posthog-identity.

Run it from the repository root:

    POSTHOG_IDENTITY_SECRET="$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')" \
    POSTHOG_API_KEY=phc_... \
    uvicorn examples.asgi_app:application

(or ``hypercorn examples.asgi_app:application``). Without POSTHOG_API_KEY
identity is still resolved, but nothing is sent and no snippet is injected;
``python -m posthog_identity sink`` gives you a local PostHog to point
POSTHOG_HOST at. Log in with any name: the signed session cookie only
remembers the name.
"""

from __future__ import annotations

import html
import json
import os
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import posthog
from itsdangerous import BadSignature, URLSafeSerializer
from werkzeug.http import dump_cookie, parse_cookie

from posthog_identity import current_identity, forget_user, identify_user
from posthog_identity.asgi import IdentityMiddleware

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

# The session's own secret. A random one logs everybody out on restart and
# breaks with several workers: set SESSION_SECRET in production.
SESSION_SECRET = os.environ.get("SESSION_SECRET") or secrets.token_hex(32)
SESSION_COOKIE = "session"
sessions = URLSafeSerializer(SESSION_SECRET, salt="example-session")


def session_user(scope: Scope) -> str | None:
    """The name in the signed session cookie, or None."""
    header = b"; ".join(v for k, v in scope["headers"] if k == b"cookie").decode("latin-1")
    value = parse_cookie(header).get(SESSION_COOKIE)
    if value is None:
        return None
    try:
        name = sessions.loads(value)
    except BadSignature:
        return None
    return name if isinstance(name, str) and name else None


async def user_id(scope: Scope) -> str | None:
    """For the middleware: who is logged in (None: nobody).

    May be async: a real site would look the session up in its store here.
    """
    return session_user(scope)


PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title} · posthog-identity</title>
</head>
<body>
  <nav>{nav}</nav>
  <h1>{title}</h1>
  {content}
</body>
</html>
"""

LOGIN_FORM = """<form method="post" action="/login">
  <label>Your name <input name="user" required maxlength="64" autofocus></label>
  <button>Log in</button>
</form>"""


async def home(scope: Scope, receive: Receive, send: Send) -> None:
    # No distinct_id: the event carries this request's identity.
    posthog.capture("page viewed", properties={"path": scope["path"]})
    user = session_user(scope)
    if user is None:
        nav, content = "Not signed in", LOGIN_FORM
    else:
        name = html.escape(user)
        nav, content = f'Signed in as <b>{name}</b> · <a href="/logout">Log out</a>', ""
    content += '<p><a href="/whoami">Who am I?</a></p>'
    page = PAGE.format(title="Home", nav=nav, content=content)
    await respond(send, 200, page.encode(), [(b"content-type", b"text/html; charset=utf-8")])


async def login(scope: Scope, receive: Receive, send: Send) -> None:
    form = parse_qs((await read_body(receive)).decode())
    name = form.get("user", [""])[0].strip()[:64]
    headers = [(b"location", b"/")]
    if name:
        cookie = dump_cookie(SESSION_COOKIE, sessions.dumps(name), httponly=True, samesite="Lax")
        headers.append((b"set-cookie", cookie.encode("latin-1")))
        # The callback reads the request's cookie, which has no session yet:
        # tell the middleware now, so the link and its cookie ride on this response.
        identify_user(name)
    await respond(send, 303, b"", headers)


async def logout(scope: Scope, receive: Receive, send: Send) -> None:
    cookie = dump_cookie(SESSION_COOKIE, "", max_age=0, httponly=True, samesite="Lax")
    forget_user()  # a fresh anonymous id, on this response
    await respond(send, 303, b"", [(b"location", b"/"), (b"set-cookie", cookie.encode("latin-1"))])


async def whoami(scope: Scope, receive: Receive, send: Send) -> None:
    identity = current_identity()
    body: dict[str, object] = {"distinct_id": None}
    if identity is not None:
        body = {
            "distinct_id": identity.distinct_id,
            "anonymous_id": identity.anonymous_id,
            "user_id": identity.user_id,
            "is_identified": identity.is_identified,
        }
    await respond(send, 200, json.dumps(body).encode(), [(b"content-type", b"application/json")])


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    await respond(send, 404, b"not found", [(b"content-type", b"text/plain")])


ROUTES = {
    ("GET", "/"): home,
    ("POST", "/login"): login,
    ("GET", "/logout"): logout,
    ("GET", "/whoami"): whoami,
}


async def respond(send: Send, status: int, body: bytes, headers: Headers) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            # Once this is sent, the middleware flushes the queued events.
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    elif scope["type"] == "http":
        route = ROUTES.get((scope["method"], scope["path"]), not_found)
        await route(scope, receive, send)
    # No websockets here: returning without accepting refuses one.


# Its posthog client, built from POSTHOG_API_KEY and POSTHOG_HOST, becomes
# posthog's default client: the posthog.capture() calls above go through it.
application = IdentityMiddleware(app, user_id=user_id)
