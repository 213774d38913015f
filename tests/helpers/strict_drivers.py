"""In-process drivers that hold the middleware to the protocol, as a strict server would.

The app (`wsgi_app`/`asgi_app`) answers a `Page` it is told, in the chunks it is told;
the drivers check that those chunks and the protocol are respected (PEP 3333 through
wsgiref's validator, ASGI message order), and `check_set_cookie` checks each
Set-Cookie header of ours is well formed. The client records its events
(`recording_client`) instead of sending them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from wsgiref.util import setup_testing_defaults

import posthog

from posthog_identity import NOTHING, identify_user
from posthog_identity.asgi import IdentityMiddleware as ASGIMiddleware
from posthog_identity.settings import Settings
from posthog_identity.signing import CookieCodec, CookieState
from posthog_identity.wsgi import IdentityMiddleware as WSGIMiddleware
from tests.helpers.project import API_KEY, SECRET
from tests.helpers.wire import COOKIE

#: Never contacted: the fuzzing client records its events instead of sending them.
HOST = "http://127.0.0.1:9"


HTML = "text/html; charset=utf-8"


PAGE = (
    b"<!DOCTYPE html>\n<html>\n<head>\n<title>fuzz</title>\n</head>\n"
    b"<body>\n<p>Hello &amp; welcome.</p>\n</body>\n</html>\n"
)


OPTIONS = re.compile(r"\}\)\(window,document,(\{.*\})\);\Z", re.DOTALL)


_UNSET = object()


@dataclass
class Page:
    """What the app behind the middleware answers, and what it does first."""

    body: bytes = PAGE
    chunks: list[bytes] | None = None  #: default: the body in one piece
    status: int = 200
    headers: list[tuple[str, str]] = field(
        default_factory=lambda: [("Content-Type", HTML), ("Content-Length", str(len(PAGE)))]
    )
    streamed: bool = False  #: WSGI: a generator rather than a list
    user: object = NOTHING  #: what the user_id callback returns
    identify: object = _UNSET  #: call identify_user() with this, unless unset

    def pieces(self) -> list[bytes]:
        return [self.body] if self.chunks is None else self.chunks


@dataclass
class Request:
    method: str = "GET"
    path: str = "/"
    scheme: str = "http"
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def named(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class Recorder:
    """posthog's `before_send`: keeps every event exactly as it would go on the wire."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        self.events.append(event)
        return event


def _app_does(page: Page, client: posthog.Client) -> None:
    if page.identify is not _UNSET:
        identify_user(page.identify)
    client.capture("Fuzzed")


def wsgi_app(client: posthog.Client) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        page = _page(environ)
        _app_does(page, client)
        start_response(f"{page.status} Fuzz", list(page.headers))
        if page.streamed:

            def generate() -> Iterator[bytes]:
                yield from page.pieces()

            return generate()
        return list(page.pieces())

    return app


def asgi_app(client: posthog.Client) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        page = _page(scope)
        _app_does(page, client)
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in page.headers]
        await send({"type": "http.response.start", "status": page.status, "headers": headers})
        for chunk in page.pieces():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def _user_id(source: dict[str, Any]) -> object:
    return _page(source).user


def middleware_for(adapter: str, config: Settings, client: posthog.Client) -> Any:
    """The middleware of one protocol over the app that answers each request's `Page`."""
    if adapter == "wsgi":
        return WSGIMiddleware(wsgi_app(client), config, user_id=_user_id, client=client)
    return ASGIMiddleware(asgi_app(client), config, user_id=_user_id, client=client)


def recording_client() -> tuple[posthog.Client, Recorder]:
    """posthog's real client, keeping its events instead of sending them."""
    recorder = Recorder()
    return posthog.Client(API_KEY, host=HOST, send=False, before_send=recorder), recorder


def _environ_key(name: str) -> str:
    return "HTTP_" + name.upper().replace("-", "_")


def call_wsgi(app: Any, request: Request, page: Page) -> Reply:
    """A WSGI server's side: one environ, start_response, the iterable, close()."""
    path = request.path.encode("utf-8", "surrogateescape").decode("latin-1")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "wsgi.url_scheme": request.scheme,
        "fuzz.page": page,
    }
    for name, value in request.headers:
        key = _environ_key(name)
        # Servers fold repeated headers into one; cookies with "; ".
        joiner = "; " if name.lower() == "cookie" else ","
        environ[key] = f"{environ[key]}{joiner}{value}" if key in environ else value
    setup_testing_defaults(environ)
    started: list[tuple[str, list[tuple[str, str]]]] = []
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        assert not started or exc_info is not None, "start_response called twice"
        started.append((status, headers))
        return written.append

    result = app(environ, start_response)
    body: list[bytes] = []
    try:
        for chunk in result:
            assert isinstance(chunk, bytes)
            assert started or not chunk, "a body byte before start_response"
            body.append(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    [(status, headers)] = started
    for name, value in headers:
        assert isinstance(name, str)
        assert isinstance(value, str)
    return Reply(int(status.split()[0]), list(headers), b"".join(written + body))


def call_asgi(app: Any, request: Request, page: Page) -> Reply:
    """An ASGI server's side: one http scope; the messages must follow the protocol."""
    raw_path = request.path.encode("utf-8", "surrogateescape")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": request.scheme,
        "path": request.path,
        "raw_path": raw_path,
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "fuzz.page": page,
    }
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    asyncio.run(app(scope, receive, send))
    start, *bodies = messages
    assert start["type"] == "http.response.start"
    assert all(m["type"] == "http.response.body" for m in bodies)
    assert bodies, "no body message"
    assert [m.get("more_body", False) for m in bodies][-1] is False
    assert all(m.get("more_body", False) for m in bodies[:-1])
    headers = []
    for name, value in start["headers"]:
        assert isinstance(name, bytes)
        assert isinstance(value, bytes)
        headers.append((name.decode("latin-1"), value.decode("latin-1")))
    return Reply(start["status"], headers, b"".join(m.get("body", b"") for m in bodies))


@dataclass(frozen=True)
class SetCookie:
    value: str
    state: CookieState
    attributes: dict[str, str | bool]


def check_set_cookie(header: str, *, secure: bool = False) -> SetCookie:
    """One well-formed Set-Cookie of ours: one cookie, the configured attributes, verifies."""
    assert not set(header) & {"\r", "\n", "\0"}, repr(header)
    parsed = SimpleCookie()
    parsed.load(header)
    assert list(parsed) == [COOKIE], header
    morsel = parsed[COOKIE]
    first, *rest = (part.strip() for part in header.split(";"))
    assert first == f"{COOKIE}={morsel.value}", header
    attributes: dict[str, str | bool] = {}
    for part in rest:
        name, sep, value = part.partition("=")
        attributes[name.lower()] = value if sep else True
    expected = {"expires", "max-age", "path", "httponly", "samesite"}
    if secure:
        expected.add("secure")
    assert set(attributes) == expected, header
    assert attributes["httponly"] is True
    assert attributes["path"] == "/"
    assert attributes["samesite"] == "Lax"
    assert attributes["max-age"] == "31536000"
    assert bool(morsel["secure"]) is secure
    verified = CODEC.loads(morsel.value)
    assert verified is not None, f"the cookie does not verify: {header}"
    assert verified.key_index == 0
    return SetCookie(morsel.value, verified.state, attributes)


def our_set_cookie(reply: Reply, app_headers: list[tuple[str, str]], **kw: Any) -> SetCookie | None:
    """The response's headers are the app's, plus at most one Set-Cookie of ours.

    Header names compare case-insensitively (ASGI lower-cases them); only
    Content-Length may change.
    """
    for name, value in reply.headers:
        assert not set(name + value) & {"\r", "\n"}, (name, value)
    sent = [(k.lower(), v) for k, v in app_headers]
    got = [(k.lower(), v) for k, v in reply.headers]
    unchanged = [h for h in sent if h[0] != "content-length"]
    assert [h for h in got if h in unchanged] == unchanged
    added = [h for h in got if h not in sent and h[0] != "content-length"]
    assert len(added) <= 1, added
    if not added:
        return None
    [(name, value)] = added
    assert name == "set-cookie"
    return check_set_cookie(value, **kw)


CODEC = CookieCodec((SECRET,))


def _page(source: dict[str, Any]) -> Page:
    page = source["fuzz.page"]
    assert isinstance(page, Page)
    return page
