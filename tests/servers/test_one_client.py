"""One posthog client per process: a view's module-level ``posthog.capture()``
and the middleware's login link go through the same client.

Under real servers: apps configured only by environment variables (they never
touch posthog's module), and the Flask example, which configures posthog's
module as posthog's docs show. In-process: which client the middleware picks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import httpx
import posthog
import pytest

from posthog_identity.asgi import IdentityMiddleware as ASGIMiddleware
from posthog_identity.settings import Settings
from posthog_identity.testing import Sink
from posthog_identity.wsgi import IdentityMiddleware as WSGIMiddleware
from tests.helpers.project import API_KEY
from tests.helpers.servers import (
    EVENT_TIMEOUT,
    Server,
    gunicorn_command,
    server_environment,
    serving,
    start_process,
    uvicorn_factory_command,
    wait_until_ready,
)
from tests.helpers.wire import distinct_id, identity_set_cookies, read_cookie
from tests.sites.module_client import HOME_VIEWED

# ---------------------------------------------------------------------------
# Under real servers


@dataclass(frozen=True)
class App:
    server: str
    command: Callable[[int], list[str]]
    home_event: str  # what its "/" captures with posthog.capture()
    ready_path: str = "/whoami"


APPS = {
    "flask, variables only": App(
        "gunicorn",
        lambda port: gunicorn_command("tests.sites.module_client:flask_factory()", port),
        HOME_VIEWED,
    ),
    "raw ASGI, variables only": App(
        "uvicorn",
        lambda port: uvicorn_factory_command("tests.sites.module_client:asgi_factory", port),
        HOME_VIEWED,
    ),
    "flask example, posthog module configured": App(
        "gunicorn",
        lambda port: gunicorn_command("examples.flask_app:app", port),
        "home viewed",
        ready_path="/login",
    ),
}


@pytest.fixture(scope="module", params=list(APPS))
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[App, Server]]:
    app = APPS[request.param]
    with Sink() as sink:
        log_dir = tmp_path_factory.mktemp("one-client")
        started = start_process(
            app.server,
            app.command,
            server_environment(sink.url),
            log_dir,
            wait=lambda process, port, log: wait_until_ready(
                app.server, process, port, log, path=app.ready_path
            ),
        )
        server = Server(app.server, started.url, sink, started.process, started.log)
        with contextmanager(serving)(server):
            yield app, server


def visit_home(app: App, server: Server) -> str:
    """A new visitor's first page; returns its anonymous id once its capture arrived."""
    with httpx.Client(base_url=server.url, timeout=10.0) as http:
        reply = http.get("/")
    assert reply.status_code == 200, reply.text
    [cookie] = identity_set_cookies(reply)
    anonymous_id = read_cookie(cookie.value).anonymous_id
    server.sink.wait_for(
        lambda events: any(distinct_id(e) == anonymous_id for e in events),
        event=app.home_event,
        timeout=EVENT_TIMEOUT,
    )
    return anonymous_id


def test_a_views_module_level_capture_arrives_with_the_request_identity(
    served: tuple[App, Server],
) -> None:
    app, server = served
    anonymous_id = visit_home(app, server)

    events = server.sink.events(event=app.home_event, distinct_id=anonymous_id)
    assert [e["api_key"] for e in events] == [API_KEY]


def test_the_server_log_shows_one_posthog_client_and_no_posthog_complaint(
    served: tuple[App, Server],
) -> None:
    app, server = served
    visit_home(app, server)

    logged = server.output()
    assert "Multiple active PostHog clients" not in logged, logged
    assert "[PostHog]" not in logged, logged


# ---------------------------------------------------------------------------
# In-process: which client the middleware sends through


@pytest.fixture
def bare_posthog() -> Iterator[None]:
    """posthog's module as a newcomer's app leaves it: not configured."""
    saved = posthog.api_key, posthog.project_api_key, posthog.host, posthog.default_client
    posthog.api_key = posthog.project_api_key = posthog.host = posthog.default_client = None
    yield
    posthog.api_key, posthog.project_api_key, posthog.host, posthog.default_client = saved


MIDDLEWARES = {"wsgi": WSGIMiddleware, "asgi": ASGIMiddleware}


def wrap(adapter: str, settings: Settings, client: posthog.Client | None = None) -> Any:
    """A middleware of `adapter`; only its choice of client matters here."""
    return MIDDLEWARES[adapter](None, settings, client=client)


@pytest.mark.usefixtures("bare_posthog")
def test_without_a_configured_module_the_middlewares_client_becomes_posthogs_default(
    adapter: str, settings: Settings
) -> None:
    middleware = wrap(adapter, settings)

    assert middleware.engine.client is not None
    assert posthog.default_client is middleware.engine.client
    assert posthog.setup() is middleware.engine.client


@pytest.mark.usefixtures("module_posthog")
def test_a_module_the_app_configured_is_the_client_the_middleware_uses(
    adapter: str, settings: Settings
) -> None:
    module_client = posthog.setup()

    middleware = wrap(adapter, settings)

    assert middleware.engine.client is module_client
    assert posthog.default_client is module_client


@pytest.mark.usefixtures("bare_posthog")
def test_a_module_api_key_set_before_any_capture_is_used_through_posthog_setup(
    adapter: str, settings: Settings, sink: Sink
) -> None:
    posthog.api_key, posthog.host = API_KEY, sink.url

    middleware = wrap(adapter, settings)

    assert posthog.default_client is not None
    assert middleware.engine.client is posthog.default_client


@pytest.mark.usefixtures("bare_posthog")
def test_a_given_client_is_used_and_posthogs_module_is_left_alone(
    adapter: str, settings: Settings, client: posthog.Client
) -> None:
    middleware = wrap(adapter, settings, client=client)

    assert middleware.engine.client is client
    assert posthog.default_client is None


@pytest.mark.usefixtures("bare_posthog")
def test_a_second_middleware_in_the_process_reuses_the_first_ones_client(
    settings: Settings,
) -> None:
    first = wrap("wsgi", settings)
    second = wrap("asgi", settings)

    assert second.engine.client is first.engine.client


@pytest.mark.usefixtures("bare_posthog")
@pytest.mark.parametrize(
    "change", [{"disabled": True}, {"api_key": None}], ids=["disabled", "no API key"]
)
def test_without_events_to_send_no_client_is_built_and_posthog_is_left_alone(
    adapter: str, settings: Settings, change: dict[str, object]
) -> None:
    middleware = wrap(adapter, replace(settings, **change))  # type: ignore[arg-type]

    assert middleware.engine.client is None
    assert posthog.default_client is None


@pytest.mark.usefixtures("module_posthog")
def test_a_module_configured_with_another_key_wins_and_the_difference_is_logged(
    adapter: str, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="posthog_identity")

    middleware = wrap(adapter, replace(settings, api_key="phc_another_project"))

    assert middleware.engine.client is posthog.setup()
    assert middleware.engine.api_key == API_KEY
    assert any("POSTHOG_API_KEY differs" in r.getMessage() for r in caplog.records)
