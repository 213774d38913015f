"""An API backend called by a single-page app from another site, under real servers.

uvicorn (ASGI) and gunicorn (WSGI) serve `tests.sites.basic`; the calls go over
HTTP with httpx as a cross-site `fetch` without credentials sends them: no
cookie of ours, posthog-js's distinct id in X-POSTHOG-DISTINCT-ID. posthog's
real client delivers the server's events to a real local `Sink`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

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


@pytest.fixture(scope="module", params=["uvicorn", "gunicorn"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    kind = str(request.param)
    with Sink() as sink:
        yield from serving(start_app(kind, sink, tmp_path_factory.mktemp(kind)))


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
