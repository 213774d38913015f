"""Starlette and FastAPI glue: `posthog_identity.integrations.starlette` in-process.

`request_identity` and FastAPI's `CurrentIdentity` in both middleware orders,
driven with `call_asgi`, and `install()`. `integrations/fastapi.py` has no
behaviour of its own (it re-exports `install` and `request_identity`, and
`CurrentIdentity` is `Depends(request_identity)`), so its tests are here too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

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
from tests.helpers.pages import snippet_options
from tests.helpers.wire import ALIAS, PERSONLESS

PAGE_VIEWED = "page viewed"

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
