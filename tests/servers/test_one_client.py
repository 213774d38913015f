"""One posthog client per process, under real servers: a view's module-level
``posthog.capture()`` and the middleware's login link go through the same client.

Apps configured only by environment variables (they never touch posthog's
module), and the Flask example, which configures posthog's module as posthog's
docs show. Which client the middleware picks, in-process, is in
`tests/unit/test_client.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest

from posthog_identity.testing import Sink
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


@pytest.fixture(scope="module")
def visited(served: tuple[App, Server]) -> str:
    """A new visitor's first page, once per server; its anonymous id once its capture arrived.

    The server's client sends every 5 s (posthog's default): one wait per server, not per test.
    """
    return visit_home(*served)


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
    served: tuple[App, Server], visited: str
) -> None:
    app, server = served

    events = server.sink.events(event=app.home_event, distinct_id=visited)
    assert [e["api_key"] for e in events] == [API_KEY]


@pytest.mark.usefixtures("visited")  # after a view's capture and its delivery
def test_the_server_log_shows_one_posthog_client_and_no_posthog_complaint(
    served: tuple[App, Server],
) -> None:
    _, server = served

    logged = server.output()
    assert "Multiple active PostHog clients" not in logged, logged
    assert "[PostHog]" not in logged, logged
