"""Fixtures: a real sink, a real posthog client posting to it, raw drivers for both protocols."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import posthog
import pytest

from posthog_identity import client as client_module
from posthog_identity.settings import Settings
from posthog_identity.signing import CookieCodec, CookieState
from posthog_identity.testing import Sink
from tests import apps

SECRET = "test-secret-0123456789abcdef0123456789"
API_KEY = "phc_test_project_key"

# A shell starts background commands (`nox &`) with SIGINT ignored, and an
# ignored signal stays ignored in every server the tests start: waitress and
# the demo, stopped with Ctrl-C's SIGINT, would then have to be killed. A
# handled signal is reset to its default in a child, so handle it here.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _forget_built_clients() -> Iterator[None]:
    """Clients built by a test's middleware post to that test's sink, gone at exit;
    one that became posthog's default client must not serve the next test."""
    default = posthog.default_client
    yield
    client_module._flushed_at_exit.clear()
    posthog.default_client = default


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as running:
        yield running


@pytest.fixture
def client(sink: Sink) -> Iterator[posthog.Client]:
    """posthog's real client, sending to the sink over HTTP from its own thread."""
    real = posthog.Client(API_KEY, host=sink.url, flush_interval=0.05)
    yield real
    real.shutdown()


@pytest.fixture
def module_posthog(sink: Sink) -> Iterator[None]:
    """Point the module-level `posthog.capture` at the sink for one test.

    The module's client is built here rather than by `posthog.setup()`, which
    batches events for 5 s: this one sends them at once, so the test waits on
    their arrival, not on the batch window.
    """
    saved = posthog.api_key, posthog.host, posthog.default_client
    posthog.api_key, posthog.host = API_KEY, sink.url
    posthog.default_client = posthog.Client(API_KEY, host=sink.url, flush_interval=0.05)
    yield
    if posthog.default_client is not None:
        posthog.default_client.shutdown()
    posthog.api_key, posthog.host, posthog.default_client = saved


@pytest.fixture
def settings(sink: Sink) -> Settings:
    return Settings(secrets=(SECRET,), api_key=API_KEY, host=sink.url)


def read_cookie(value: str) -> CookieState:
    verified = CookieCodec((SECRET,)).loads(value)
    assert verified is not None, "the identity cookie does not verify"
    return verified.state


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


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


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


@pytest.fixture
def site(adapter: str, settings: Settings, client: posthog.Client) -> Driver:
    return driver_for(adapter, make_site(adapter, settings, client))


@pytest.fixture
def caplog_identity(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="posthog_identity")
    return caplog
