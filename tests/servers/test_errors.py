"""Unhandled errors under real servers reach error tracking once, as the request.

Each app of `tests.sites.errors` runs in a subprocess (gunicorn or uvicorn),
configured by environment variables only, sending to its own `Sink`; all are
started and visited at the same time (`visits`). A visitor with
our signed cookie, posthog-js's session header and a browser's user agent asks
for `/boom`; the framework answers 500 and the `$exception` must arrive once
with the visitor's distinct id, session and request properties. Then
`/marker` captures through the same client, whose one consumer sends in
order: once the marker arrived, everything the error sent has too.

The apps' errors are logged by their frameworks, so these servers' logs
hold tracebacks; only our own logger's errors fail a test here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from posthog_identity.signing import CookieCodec, CookieState
from posthog_identity.testing import Sink
from tests.helpers.project import SECRET
from tests.helpers.servers import (
    EVENT_TIMEOUT,
    NoCookies,
    Started,
    gunicorn_command,
    read_log,
    server_environment,
    start_process,
    stop_process,
    uvicorn_factory_command,
    wait_until_ready,
)
from tests.helpers.wire import COOKIE, distinct_id

SITE = "tests.sites.errors"
MARKER = "Marker After The Error"
EXCEPTION = "$exception"
SESSION = "0190a4b2-7c3e-7d41-8b2a-5f6e7d8c9b0a"
AGENT = "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0"


@dataclass(frozen=True)
class Setup:
    """One app under one server, with the environment it adds."""

    server: str
    factory: str
    env: tuple[tuple[str, str], ...] = ()

    @property
    def posthog_inside(self) -> bool:
        """posthog's own Django middleware runs inside ours."""
        return ("POSTHOG_MIDDLEWARE_INSIDE", "1") in self.env

    def command(self, port: int) -> list[str]:
        if self.server == "gunicorn":
            return gunicorn_command(f"{SITE}:{self.factory}()", port)
        return uvicorn_factory_command(f"{SITE}:{self.factory}", port)


SENDING = {
    "django-gunicorn": Setup("gunicorn", "django_wsgi"),
    "django-uvicorn": Setup("uvicorn", "django_asgi"),
    "django-posthog-middleware-inside-gunicorn": Setup(
        "gunicorn", "django_wsgi", (("POSTHOG_MIDDLEWARE_INSIDE", "1"),)
    ),
    "django-posthog-middleware-inside-uvicorn": Setup(
        "uvicorn", "django_asgi", (("POSTHOG_MIDDLEWARE_INSIDE", "1"),)
    ),
    "flask-gunicorn": Setup("gunicorn", "flask_wsgi"),
    "plain-asgi-uvicorn": Setup("uvicorn", "plain_asgi"),
}
SILENT = {
    "capture-exceptions-off": Setup(
        "gunicorn", "django_wsgi", (("POSTHOG_IDENTITY_CAPTURE_EXCEPTIONS", "false"),)
    ),
    "no-consent": Setup("gunicorn", "django_wsgi", (("POSTHOG_IDENTITY_CONSENT", "opt-in"),)),
}


@dataclass
class Running:
    setup: Setup
    url: str
    sink: Sink
    log: Path


@dataclass
class Visited:
    """One server after a visitor's `/boom`: their anonymous id and the
    `$exception` events its client sent before the marker."""

    server: Running
    anonymous_id: str
    exceptions: list[dict[str, Any]]


SETUPS = {**SENDING, **SILENT}


def start(setup: Setup, sink: Sink, directory: Path) -> Started:
    env = server_environment(sink.url)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(setup.env)
    return start_process(
        setup.server,
        setup.command,
        env,
        directory,
        wait=partial(wait_until_ready, setup.server, path="/ok"),
    )


@pytest.fixture(scope="module")
def visits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Visited]]]:
    """Every setup under its server, all started, then all visited, at the same time.

    A visit ends waiting for the marker, which the server's posthog client
    (posthog's defaults) sends after batching for up to 5 s: the servers wait
    once, together. Each server has its own sink; a failed start or visit
    fails its own test.
    """
    directories = {name: tmp_path_factory.mktemp(name) for name in SETUPS}
    started: dict[str, Started] = {}

    def start_setup(name: str, sink: Sink) -> Running:
        setup = SETUPS[name]
        started[name] = start(setup, sink, directories[name])
        return Running(setup, started[name].url, sink, started[name].log)

    def visit(starting: Future[Running]) -> Visited:
        server = starting.result()
        anonymous_id = visit_boom(server)
        return Visited(server, anonymous_id, exceptions_before_marker(server))

    # The pool exits before the sinks: they receive what the servers flush on stopping.
    with ExitStack() as sinks, ThreadPoolExecutor(len(SETUPS)) as pool:
        try:
            starting = {
                name: pool.submit(start_setup, name, sinks.enter_context(Sink())) for name in SETUPS
            }
            # Visited once all have started: a start's load never delays another's events.
            wait(starting.values())
            visited = {name: pool.submit(visit, starting[name]) for name in SETUPS}
            wait(visited.values())
            yield visited
        finally:
            # Stopped together too.
            list(pool.map(stop_process, [server.process for server in started.values()]))
    # Reported at the teardown of the module's last test.
    for name, server in started.items():
        logged = read_log(server.log)
        assert "posthog_identity: " not in logged, f"{name}: {logged}"  # our logger's lines


@pytest.fixture(scope="module", params=list(SENDING), ids=list(SENDING))
def sending(request: pytest.FixtureRequest, visits: dict[str, Future[Visited]]) -> Visited:
    return visits[str(request.param)].result()


@pytest.fixture(scope="module", params=list(SILENT), ids=list(SILENT))
def silent(request: pytest.FixtureRequest, visits: dict[str, Future[Visited]]) -> Visited:
    return visits[str(request.param)].result()


def visit_boom(server: Running) -> str:
    """A visitor with our cookie asks for /boom; returns their anonymous id."""
    anonymous_id = str(uuid.uuid4())
    state = CookieState(anonymous_id, None, False, int(time.time()))
    headers = {
        "Cookie": f"{COOKIE}={CookieCodec((SECRET,)).dumps(state)}",
        "X-POSTHOG-SESSION-ID": SESSION,
        "User-Agent": AGENT,
    }
    with httpx.Client(base_url=server.url, timeout=10.0, cookies=NoCookies()) as http:
        reply = http.get("/boom?token=secret", headers=headers)
        assert reply.status_code == 500  # the framework still answers its 500
    return anonymous_id


def test_an_unhandled_error_reaches_error_tracking_once_as_the_request(
    sending: Visited,
) -> None:
    [event] = sending.exceptions
    properties = event["properties"]
    assert distinct_id(event) == sending.anonymous_id
    assert properties["$session_id"] == SESSION
    url = sending.server.url
    if sending.server.setup.posthog_inside:
        # Its own context's properties win inside it: Django's absolute URI, query included.
        assert properties["$current_url"] == f"{url}/boom?token=secret"
    else:
        assert properties["$current_url"] == f"{url}/boom"  # never the query string
    assert properties["$request_method"] == "GET"
    assert properties["$request_path"] == "/boom"
    assert properties["$user_agent"] == AGENT
    assert properties["$ip"] == "127.0.0.1"
    [error] = properties["$exception_list"]
    assert error["type"] == "Boom"
    assert error["mechanism"]["handled"] is False


def test_no_exception_event_when_turned_off_or_without_consent(silent: Visited) -> None:
    assert silent.exceptions == []


def exceptions_before_marker(server: Running) -> list[dict[str, Any]]:
    """The `$exception` events the server sent, up to a marker captured now."""
    marker = str(uuid.uuid4())
    with httpx.Client(base_url=server.url, timeout=10.0, cookies=NoCookies()) as http:
        assert http.get("/marker", params={"id": marker}).status_code == 200

    def marked(event: dict[str, Any]) -> bool:
        return event["event"] == MARKER and event["properties"].get("marker") == marker

    server.sink.wait_for(lambda found: any(map(marked, found)), timeout=EVENT_TIMEOUT)
    events = server.sink.events()
    cut = next(i for i, e in enumerate(events) if marked(e))
    return [e for e in events[:cut] if e["event"] == EXCEPTION]
