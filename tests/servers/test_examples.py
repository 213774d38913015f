"""The examples under their real servers, and the Starlette/FastAPI glue in-process.

Each example runs in a subprocess under a real server on a free 127.0.0.1
port, configured by environment variables (`tests.helpers.servers`' helpers),
with PostHog pointed at one `Sink` for the module. An httpx client with its
own cookie jar walks it like a browser: anonymous visit, login form, page,
logout, page. The server is then stopped the way its operator would stop it
(which flushes the one posthog client they share), so the
events at the sink are complete and absence can be asserted without sleeping.

The in-process tests drive Starlette and FastAPI apps with `call_asgi`, in
both middleware orders, for `request_identity` and `CurrentIdentity`.
"""

from __future__ import annotations

import html
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from posthog.client import Client
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from posthog_identity import ConfigurationError, identify_user
from posthog_identity.asgi import IdentityMiddleware
from posthog_identity.identity import Identity
from posthog_identity.integrations.fastapi import CurrentIdentity, install
from posthog_identity.integrations.starlette import request_identity
from posthog_identity.settings import Settings
from posthog_identity.testing import Sink
from tests.helpers.drivers import Driver, call_asgi
from tests.helpers.pages import html5_parent_of_snippet, snippet_options
from tests.helpers.project import API_KEY, ROOT
from tests.helpers.servers import (
    check_stopped,
    free_port,
    read_log,
    server_environment,
    start_process,
    stop_process,
)
from tests.helpers.wire import (
    ALIAS,
    COOKIE,
    PERSONLESS,
    distinct_id,
    identity_set_cookies,
    read_cookie,
)

PAGE_VIEWED = "page viewed"

# ---------------------------------------------------------------------------
# Servers


@dataclass(frozen=True)
class ServerKind:
    name: str  # also how `tests.helpers.servers.LISTENING` knows what it logs once ready
    stop_signal: signal.Signals  # how its operator stops it gracefully

    def command(self, target: str, port: int) -> list[str]:
        python = [sys.executable, "-m", self.name]
        if self.name == "uvicorn":
            return [*python, target, "--host", "127.0.0.1", "--port", str(port), "--lifespan", "on"]
        if self.name == "hypercorn":
            return [*python, target, "--bind", f"127.0.0.1:{port}"]
        if self.name == "gunicorn":
            # Not the shared ~/.gunicorn/gunicorn.ctl: two servers could collide.
            return [*python, target, "--bind", f"127.0.0.1:{port}", "--no-control-socket"]
        assert self.name == "waitress"
        return [*python, f"--listen=127.0.0.1:{port}", target]


SERVERS = {
    kind.name: kind
    for kind in [
        ServerKind("uvicorn", signal.SIGTERM),
        ServerKind("hypercorn", signal.SIGTERM),
        ServerKind("gunicorn", signal.SIGTERM),
        # waitress handles no SIGTERM (the process dies without flushing):
        # Ctrl-C is its graceful stop.
        ServerKind("waitress", signal.SIGINT),
    ]
}

TARGETS = {
    "fastapi_app": "examples.fastapi_app:app",
    "starlette_app": "examples.starlette_app:app",
    "wsgi_app": "examples.wsgi_app:application",
    "asgi_app": "examples.asgi_app:application",
}

MATRIX = [
    ("fastapi_app", "uvicorn"),
    ("fastapi_app", "hypercorn"),
    ("starlette_app", "uvicorn"),
    ("wsgi_app", "gunicorn"),
    ("wsgi_app", "waitress"),
    ("asgi_app", "uvicorn"),
]


@dataclass
class Running:
    url: str
    log: Path
    process: subprocess.Popen[bytes]


@contextmanager
def serve(example: str, server: str, sink: Sink, log_dir: Path) -> Iterator[Running]:
    """Run `example` under `server`; on exit stop it gracefully and check its log."""
    kind = SERVERS[server]
    started = start_process(
        server,
        partial(kind.command, TARGETS[example]),
        server_environment(sink.url),
        log_dir,
        log_name=f"{example}-{server}",
        how=kind.stop_signal,
    )  # ready once our process logged its port and answers /whoami
    process, log = started.process, started.log
    try:
        yield Running(started.url, log, process)
    finally:
        killed = stop_process(process, kind.stop_signal)
    # The failure policy hides the library's errors from responses: the log shows them.
    check_stopped(server, log, killed, how=kind.stop_signal)
    logged = read_log(log)
    assert "posthog_identity:" not in logged, logged
    # posthog's own complaints too, such as two clients for one project.
    assert "[PostHog]" not in logged, logged


@pytest.fixture(scope="module")
def server_sink() -> Iterator[Sink]:
    with Sink() as sink:
        yield sink


# ---------------------------------------------------------------------------
# The walk


def page_identity(reply: httpx.Response) -> dict[str, Any]:
    """The identity the injected snippet bootstraps posthog-js with."""
    assert reply.headers["content-type"].startswith("text/html")
    body = reply.content
    assert html5_parent_of_snippet(body) == "head"
    identity: dict[str, Any] = snippet_options(body)["identity"]
    return identity


def the_identity_cookie(reply: httpx.Response, http: httpx.Client) -> str:
    """The one identity Set-Cookie of `reply`, which the client's jar now holds."""
    [cookie] = identity_set_cookies(reply)
    assert http.cookies.get(COOKIE) == cookie.value
    return cookie.value


@dataclass(frozen=True)
class Walk:
    before: str  # the anonymous id before login
    after: str  # the anonymous id after logout


def walk(http: httpx.Client, user: str) -> Walk:
    """Anonymous visit, login, page, logout, page; checks cookies, pages and /whoami."""
    # An anonymous visit: a new anonymous id, in the cookie and in the page.
    home = http.get("/")
    assert home.status_code == 200
    first = read_cookie(the_identity_cookie(home, http))
    assert first.user_hash is None
    assert page_identity(home) == {
        "anonymous": first.anonymous_id,
        "user": None,
        "signedIn": False,
    }
    assert 'action="/login"' in home.text
    # The same id on the next page, and no Set-Cookie.
    again = http.get("/")
    assert identity_set_cookies(again) == []
    assert page_identity(again)["anonymous"] == first.anonymous_id

    # Login: the login response itself carries the linked cookie.
    reply = http.post("/login", data={"user": user})
    assert reply.status_code == 303, reply.text
    assert reply.headers["location"] == "/"
    linked = read_cookie(the_identity_cookie(reply, http))
    assert linked.anonymous_id == first.anonymous_id
    assert linked.user_hash is not None
    assert linked.linked

    # The page after login: the user, in the page and the snippet.
    page = http.get("/")
    assert page.status_code == 200
    assert identity_set_cookies(page) == []
    assert f"Signed in as <b>{html.escape(user)}</b>" in page.text
    assert page_identity(page) == {
        "anonymous": first.anonymous_id,
        "user": user,
        "signedIn": True,
    }
    assert http.get("/whoami").json() == {
        "distinct_id": user,
        "anonymous_id": first.anonymous_id,
        "user_id": user,
        "is_identified": True,
    }

    # Logout: a new anonymous id, on the logout response.
    reply = http.get("/logout")
    assert reply.status_code == 303
    assert reply.headers["location"] == "/"
    after = read_cookie(the_identity_cookie(reply, http))
    assert after.anonymous_id != first.anonymous_id
    assert after.user_hash is None
    assert not after.linked

    # The page after logout: the new anonymous id, the login form again.
    page = http.get("/")
    assert identity_set_cookies(page) == []
    assert page_identity(page) == {
        "anonymous": after.anonymous_id,
        "user": None,
        "signedIn": False,
    }
    assert 'action="/login"' in page.text
    assert http.get("/whoami").json()["distinct_id"] == after.anonymous_id
    return Walk(first.anonymous_id, after.anonymous_id)


@pytest.mark.parametrize(
    ("example", "server"), MATRIX, ids=[f"{example}-{server}" for example, server in MATRIX]
)
def test_example_walk_under_its_server(
    example: str, server: str, server_sink: Sink, tmp_path: Path
) -> None:
    # Any name: spaces, non-ASCII and HTML-special characters travel through
    # the form, the session, the events and the page (escaped).
    user = f"Zoë <{uuid.uuid4().hex[:12]}> & co"

    with (
        serve(example, server, server_sink, tmp_path) as running,
        httpx.Client(base_url=running.url, follow_redirects=False, timeout=10.0) as http,
    ):
        ids = walk(http, user)
    # The server has stopped and flushed: every event it sent has arrived.

    events = [e for e in server_sink.events() if distinct_id(e) in (ids.before, user, ids.after)]
    assert {e.get("api_key") for e in events} == {API_KEY}
    [alias] = [e for e in server_sink.events(event=ALIAS) if distinct_id(e) == user]
    assert alias["properties"]["alias"] == ids.before
    assert PERSONLESS not in alias["properties"]
    assert [e for e in events if e["event"] == ALIAS] == [alias]
    # The module-level client sends in order from one thread.
    views = [
        (distinct_id(e), "personless" if e["properties"].get(PERSONLESS) is False else "person")
        for e in events
        if e["event"] == PAGE_VIEWED
    ]
    assert views == [
        (ids.before, "personless"),  # anonymous
        (ids.before, "personless"),
        (user, "person"),  # after login: the user, even with the middleware outside auth
        (ids.after, "personless"),  # after logout: never the user again
    ]
    assert sorted(e["event"] for e in events if distinct_id(e) == user) == [ALIAS, PAGE_VIEWED]


#: Time for a server to import the app and exit; generous, on a loaded machine.
EXIT_TIMEOUT = 30.0


@pytest.mark.parametrize("example", ["fastapi_app", "starlette_app"])
def test_without_the_secret_the_example_exits_under_uvicorn_before_serving_naming_it(
    example: str, tmp_path: Path
) -> None:
    """uvicorn's default lifespan mode ("auto") takes an error raised while
    Starlette builds its middleware for "lifespan unsupported" and serves 500s:
    the documented set-up reads the settings at import instead."""
    env = server_environment("http://127.0.0.1:9")
    del env["POSTHOG_IDENTITY_SECRET"]
    command = [sys.executable, "-m", "uvicorn", TARGETS[example], "--host", "127.0.0.1"]
    log = tmp_path / "uvicorn.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [*command, "--port", str(free_port())],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        returncode = process.wait(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {EXIT_TIMEOUT}s:\n{read_log(log)}")
    finally:
        stop_process(process)
    logged = read_log(log)
    assert returncode != 0, logged
    assert "Uvicorn running on" not in logged
    assert "POSTHOG_IDENTITY_SECRET: is required" in logged


# ---------------------------------------------------------------------------
# In-process: request_identity and CurrentIdentity in both middleware orders

OUTSIDE = "identity outside auth"
INSIDE = "identity inside auth"
ORDERS = [OUTSIDE, INSIDE]


class HeaderAuth(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        name = conn.headers.get("x-user")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


def describe(identity: Identity | None) -> dict[str, Any] | None:
    if identity is None:
        return None
    return {"distinct_id": identity.distinct_id, "user_id": identity.user_id}


def starlette_site(
    client: Client, *, identity: Middleware | None, order: str = OUTSIDE, auth: bool = True
) -> Starlette:
    async def page(request: Request) -> JSONResponse:
        found = request_identity(request)
        client.capture(PAGE_VIEWED)
        return JSONResponse(describe(found))

    def sync_page(request: Request) -> JSONResponse:
        found = request_identity(request)
        client.capture(PAGE_VIEWED)
        return JSONResponse(describe(found))

    async def no_helper(request: Request) -> JSONResponse:
        client.capture(PAGE_VIEWED)
        return JSONResponse(None)

    # Starlette's list is outermost first.
    middleware = [Middleware(AuthenticationMiddleware, backend=HeaderAuth())] if auth else []
    if identity is not None:
        middleware.insert(0 if order == OUTSIDE else len(middleware), identity)
    return Starlette(
        routes=[Route("/async", page), Route("/sync", sync_page), Route("/no-helper", no_helper)],
        middleware=middleware,
    )


def fastapi_site(client: Client, *, identity: Middleware | None, order: str = OUTSIDE) -> FastAPI:
    app = FastAPI()

    @app.get("/async")
    async def page(found: CurrentIdentity) -> dict[str, Any] | None:
        client.capture(PAGE_VIEWED)
        return describe(found)

    @app.get("/sync")
    def sync_page(found: CurrentIdentity) -> dict[str, Any] | None:
        client.capture(PAGE_VIEWED)
        return describe(found)

    @app.get("/no-helper")
    async def no_helper() -> None:
        client.capture(PAGE_VIEWED)

    # add_middleware: the last one added is the outermost.
    if identity is not None and order == INSIDE:
        app.add_middleware(identity.cls, *identity.args, **identity.kwargs)
    app.add_middleware(AuthenticationMiddleware, backend=HeaderAuth())
    if identity is not None and order == OUTSIDE:
        app.add_middleware(identity.cls, *identity.args, **identity.kwargs)
    return app


SITES: dict[str, Callable[..., Any]] = {"starlette": starlette_site, "fastapi": fastapi_site}


def drive(app: Any) -> Driver:
    return Driver(lambda method, url, headers: call_asgi(app, method, url, headers))


@pytest.mark.parametrize("endpoint", ["/async", "/sync"])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("framework", list(SITES))
def test_endpoint_sees_the_user_and_its_captures_carry_it(
    settings: Settings,
    client: Client,
    sink: Sink,
    framework: str,
    order: str,
    endpoint: str,
) -> None:
    identity = Middleware(IdentityMiddleware, settings, client=client)
    driver = drive(SITES[framework](client, identity=identity, order=order))

    anonymous = driver.get(endpoint)
    anonymous_id = driver.state.anonymous_id
    login = driver.get(endpoint, user="grace")
    returning = driver.get(endpoint, user="grace")

    assert json.loads(anonymous.body) == {"distinct_id": anonymous_id, "user_id": None}
    assert json.loads(login.body) == {"distinct_id": "grace", "user_id": "grace"}
    assert json.loads(returning.body) == {"distinct_id": "grace", "user_id": "grace"}
    assert returning.identity_cookies == []
    assert driver.state.anonymous_id == anonymous_id
    assert driver.state.linked
    views = sink.wait_for(event=PAGE_VIEWED, count=3)
    assert [(e["distinct_id"], e["properties"].get(PERSONLESS, True)) for e in views] == [
        (anonymous_id, False),
        ("grace", True),  # absent, or True over the request's first tag: a person
        ("grace", True),
    ]
    (alias,) = sink.wait_for(event=ALIAS, count=1)
    assert (alias["distinct_id"], alias["properties"]["alias"]) == ("grace", anonymous_id)


@pytest.mark.parametrize("user", [None, "grace"], ids=["anonymous", "authenticated"])
@pytest.mark.parametrize("auth", [True, False], ids=["with auth", "without auth"])
def test_request_identity_is_none_without_the_middleware(
    client: Client, auth: bool, user: str | None
) -> None:
    driver = drive(starlette_site(client, identity=None, auth=auth))

    for endpoint in ["/async", "/sync"]:
        reply = driver.get(endpoint, user=user)
        assert reply.status == 200
        assert json.loads(reply.body) is None
        assert reply.identity_cookies == []


@pytest.mark.parametrize("endpoint", ["/async", "/sync"])
def test_current_identity_is_none_without_the_middleware(client: Client, endpoint: str) -> None:
    reply = drive(fastapi_site(client, identity=None)).get(endpoint, user="grace")
    assert reply.status == 200
    assert json.loads(reply.body) is None


def test_request_identity_is_none_on_an_excluded_path(settings: Settings, client: Client) -> None:
    excluded = replace(settings, exclude_paths=("/async",))
    identity = Middleware(IdentityMiddleware, excluded, client=client)
    driver = drive(starlette_site(client, identity=identity))

    reply = driver.get("/async", user="grace")

    assert json.loads(reply.body) is None
    assert reply.identity_cookies == []


@pytest.mark.parametrize("framework", list(SITES))
def test_without_the_helper_a_capture_outside_auth_misses_the_user(
    settings: Settings, client: Client, sink: Sink, framework: str
) -> None:
    """What `request_identity`/`CurrentIdentity` fix: the user is only known after
    the middleware started, and the cookie holds a hash, not the id."""
    identity = Middleware(IdentityMiddleware, settings, client=client)
    driver = drive(SITES[framework](client, identity=identity, order=OUTSIDE))
    driver.get("/async")
    driver.get("/async", user="grace")
    anonymous_id = driver.state.anonymous_id

    reply = driver.get("/no-helper", user="grace")

    assert reply.identity_cookies == []  # the response still knew the user
    *_, view = sink.wait_for(event=PAGE_VIEWED, count=3)
    assert view["distinct_id"] == anonymous_id
    # The anonymous id was merged into grace at login: not personless.
    assert PERSONLESS not in view["properties"]


class Stamp(BaseHTTPMiddleware):
    """Someone else's middleware, built on BaseHTTPMiddleware."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers["x-stamp"] = "1"
        return response


@pytest.mark.parametrize("position", ["outside ours", "inside ours"])
def test_base_http_middleware_around_ours_is_fine(
    settings: Settings, client: Client, sink: Sink, position: str
) -> None:
    async def page(request: Request) -> HTMLResponse:
        client.capture(PAGE_VIEWED)
        return HTMLResponse("<!doctype html><html><head><title>t</title></head><body>hi</body>")

    def login(request: Request) -> PlainTextResponse:
        identify_user(request.query_params["user"])
        client.capture("logged in")
        return PlainTextResponse("welcome")

    identity = Middleware(IdentityMiddleware, settings, client=client)
    stamp = Middleware(Stamp)
    app = Starlette(
        routes=[Route("/", page), Route("/login", login)],
        middleware=[stamp, identity] if position == "outside ours" else [identity, stamp],
    )
    driver = drive(app)

    home = driver.get("/")
    anonymous_id = driver.state.anonymous_id
    reply = driver.get("/login?user=grace")

    assert home.header("x-stamp") == reply.header("x-stamp") == "1"
    assert snippet_options(home.body)["identity"]["anonymous"] == anonymous_id
    if home.header("content-length") is not None:
        assert home.header("content-length") == str(len(home.body))
    assert reply.body == b"welcome"
    assert driver.state.anonymous_id == anonymous_id
    assert driver.state.linked
    (view,) = sink.wait_for(event=PAGE_VIEWED, count=1)
    assert view["distinct_id"] == anonymous_id
    (logged_in,) = sink.wait_for(event="logged in", count=1)
    assert logged_in["distinct_id"] == "grace"
    (alias,) = sink.wait_for(event=ALIAS, count=1)
    assert (alias["distinct_id"], alias["properties"]["alias"]) == ("grace", anonymous_id)


# ---------------------------------------------------------------------------
# In-process: install()


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_install_raises_on_a_bad_configuration_before_the_app_is_first_called(
    framework: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POSTHOG_IDENTITY_SECRET", raising=False)
    app = Starlette() if framework == "starlette" else FastAPI()

    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_SECRET"):
        install(app)


def test_install_validates_init_options_before_the_app_is_first_called(settings: Settings) -> None:
    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_INIT_OPTIONS"):
        install(FastAPI(), settings=settings, init_options={"bootstrap": {}})


def test_install_adds_the_middleware_around_everything_added_before(
    settings: Settings, client: Client, sink: Sink
) -> None:
    app = fastapi_site(client, identity=None)

    installed = install(app, settings=settings, client=client, init_options={"debug": True})
    driver = drive(app)
    anonymous = json.loads(driver.get("/async").body)
    login = json.loads(driver.get("/async", user="grace").body)

    assert installed.init_options == {"debug": True}
    assert anonymous == {"distinct_id": driver.state.anonymous_id, "user_id": None}
    assert login == {"distinct_id": "grace", "user_id": "grace"}
    (alias,) = sink.wait_for(event=ALIAS, count=1)
    assert alias["distinct_id"] == "grace"
