"""An API backend called by a single-page app from another site, under real servers.

uvicorn (ASGI) and gunicorn (WSGI) serve `tests.sites.basic`; the calls go over
HTTP with httpx as a cross-site `fetch` without credentials sends them: no
cookie of ours, posthog-js's distinct id in X-POSTHOG-DISTINCT-ID. posthog's
real client delivers each server's events to its own real local `Sink`. Both
servers start at the same time.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager

import httpx
import pytest

from posthog_identity.testing import Sink
from tests.helpers.servers import (
    NoCookies,
    Server,
    checking_test,
    serving,
    start_app,
    wait_for_events,
)
from tests.helpers.wire import ALIAS, PERSONLESS

KINDS = ["uvicorn", "gunicorn"]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Server]]]:
    """Both servers, started at the same time, each sending to its own sink; a failed
    start fails its own tests. Stopped (and checked) at the module's end."""
    directories = {kind: tmp_path_factory.mktemp(kind) for kind in KINDS}
    with ExitStack() as stack:
        sinks = {kind: stack.enter_context(Sink()) for kind in KINDS}
        with ThreadPoolExecutor(len(KINDS)) as pool:
            starting = {
                kind: pool.submit(start_app, kind, sinks[kind], directories[kind]) for kind in KINDS
            }
        for started in starting.values():
            if started.exception() is None:
                stack.enter_context(contextmanager(serving)(started.result()))
        yield starting


@pytest.fixture(scope="module", params=KINDS)
def server(request: pytest.FixtureRequest, servers: dict[str, Future[Server]]) -> Server:
    return servers[str(request.param)].result()


@pytest.fixture(autouse=True)
def _no_server_errors(server: Server) -> Iterator[None]:
    yield from checking_test(server)


def uuid7() -> str:
    """A new id shaped as posthog-js mints them (UUIDv7, lower case)."""
    return str(uuid.UUID(int=uuid.uuid4().int & ~(0xF << 76) | (0x7 << 76)))


def call(server: Server, path: str, distinct_id: str, user: str | None = None) -> httpx.Response:
    """A cross-site fetch with posthog-js's tracing header: no cookie sent, none kept."""
    headers = {"X-POSTHOG-DISTINCT-ID": distinct_id}
    if user is not None:
        headers["X-User"] = user  # the API's own authentication (a bearer token, say)
    with httpx.Client(base_url=server.url, cookies=NoCookies(), timeout=10.0) as http:
        return http.get(path, headers=headers, follow_redirects=False)


def test_a_cross_site_spas_calls_join_its_own_id_through_login_and_logout(server: Server) -> None:
    browser, user, after_reset = uuid7(), f"user-{uuid.uuid4()}", uuid7()

    # Two anonymous calls, no cookie: both on the browser's own id, personless.
    assert call(server, "/", browser).status_code == 200
    assert call(server, "/", browser).status_code == 200
    home = wait_for_events(server, "Home Viewed", browser, count=2)
    assert len(home) == 2
    assert all(event["properties"][PERSONLESS] is False for event in home)

    # Login links the browser's id into the user; posthog.identify() then sends the user's.
    assert call(server, f"/login?user={user}", browser).status_code == 302
    assert call(server, "/", user, user=user).status_code == 200
    wait_for_events(server, "Home Viewed", user)

    # Logout, then posthog.reset(): the next anonymous period is the browser's new id.
    assert call(server, "/logout", user, user=user).status_code == 302
    assert call(server, "/", after_reset).status_code == 200
    (anonymous_again,) = wait_for_events(server, "Home Viewed", after_reset)
    assert anonymous_again["properties"][PERSONLESS] is False

    (alias,) = server.sink.events(event=ALIAS, distinct_id=user)
    assert alias["properties"]["alias"] == browser, "linked once, from the browser's id"
    assert server.sink.events(event=ALIAS, distinct_id=after_reset) == []


def test_a_cors_preflight_gets_no_cookie(server: Server) -> None:
    with httpx.Client(base_url=server.url, cookies=NoCookies(), timeout=10.0) as http:
        reply = http.options(
            "/whoami",
            headers={
                "Origin": "https://spa.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-posthog-distinct-id",
            },
        )
    assert reply.headers.get_list("set-cookie") == []
    assert reply.json() == {"identity": None}
