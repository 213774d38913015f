"""In-process drivers: send a request to a WSGI or ASGI app as a server would, record the reply.

`call_wsgi` runs wsgiref's validator on both sides; `call_asgi` runs one http scope.
`Driver` keeps the identity cookie like a browser. `make_site` wraps `tests.sites.basic`
in the middleware of one protocol, and `driver_for` drives it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import posthog

from posthog_identity.settings import Settings
from posthog_identity.signing import CookieState
from tests.helpers.wire import read_cookie
from tests.sites import basic as apps


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers_named(name)
        return values[0] if values else None

    def headers_named(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def identity_cookies(self) -> list[str]:
        """Values of our Set-Cookie headers."""
        found = []
        for header in self.headers_named("Set-Cookie"):
            name, _, rest = header.partition("=")
            if name == "ph_identity":
                found.append(rest.split(";", 1)[0])
        return found


@dataclass
class Driver:
    """Sends requests to an app in-process, keeping the identity cookie like a browser."""

    call: Callable[[str, str, dict[str, str]], Reply]
    cookie: str | None = None
    sent: list[Reply] = field(default_factory=list)

    def get(
        self,
        url: str,
        *,
        user: str | None = None,
        cookie: str | None = None,
        method: str = "GET",
        headers: dict[str, str] | None = None,
    ) -> Reply:
        all_headers = dict(headers or {})
        jar = (
            cookie
            if cookie is not None
            else (f"ph_identity={self.cookie}" if self.cookie else None)
        )
        if jar:
            all_headers["Cookie"] = jar
        if user is not None:
            all_headers["X-User"] = user
        reply = self.call(method, url, all_headers)
        for value in reply.identity_cookies:
            self.cookie = value
        self.sent.append(reply)
        return reply

    @property
    def state(self) -> CookieState:
        assert self.cookie is not None
        return read_cookie(self.cookie)


def call_wsgi(
    app: Any, method: str, url: str, headers: dict[str, str], *, scheme: str = "http"
) -> Reply:
    """Drive a WSGI app as a server would, with wsgiref's validator on both sides."""
    parts = urlsplit(url)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": parts.path,
        "QUERY_STRING": parts.query,
        "wsgi.url_scheme": scheme,
        "REMOTE_ADDR": "127.0.0.1",
    }
    setup_testing_defaults(environ)
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    captured: dict[str, Any] = {}

    def start_response(
        status: str, response_headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Any:
        captured["status"], captured["headers"] = status, response_headers
        return lambda data: captured.setdefault("written", []).append(data)

    result = validator(app)(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        result.close()
    written = b"".join(captured.get("written", []))
    return Reply(int(captured["status"].split()[0]), list(captured["headers"]), written + body)


def call_asgi(
    app: Any, method: str, url: str, headers: dict[str, str], *, scheme: str = "http"
) -> Reply:
    """Drive an ASGI app with one http scope, recording what it sends."""
    parts = urlsplit(url)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": parts.path,
        "raw_path": parts.path.encode(),
        "root_path": "",
        "query_string": parts.query.encode(),
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    decoded = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])]
    return Reply(start["status"], decoded, body)


ADAPTERS = ["wsgi", "asgi"]


def make_site(adapter: str, settings: Settings, client: posthog.Client, **options: Any) -> Any:
    """The test site wrapped by the middleware of one protocol."""
    if adapter == "wsgi":
        from posthog_identity.wsgi import IdentityMiddleware as WSGI

        return WSGI(
            validator(apps.make_wsgi_app(client)),
            settings,
            user_id=apps.wsgi_user,
            client=client,
            **options,
        )
    from posthog_identity.asgi import IdentityMiddleware as ASGI

    return ASGI(
        apps.make_asgi_app(client),
        settings,
        user_id=apps.asgi_user,
        client=client,
        **options,
    )


def driver_for(adapter: str, app: Any, *, scheme: str = "http") -> Driver:
    call = call_wsgi if adapter == "wsgi" else call_asgi
    return Driver(lambda method, url, headers: call(app, method, url, headers, scheme=scheme))
