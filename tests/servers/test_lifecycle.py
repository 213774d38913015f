"""The identity lifecycle through real servers: gunicorn (WSGI) and uvicorn (ASGI).

Each server runs `tests.sites.basic` in a subprocess, configured by environment
variables, and sends its events with posthog's real client to a real local
`Sink`. Requests go over HTTP with httpx; the identity cookie is kept by hand
(no cookie jar), like a browser would. One server and one sink per module and
server kind; tests keep apart by using their own user ids and anonymous ids.

Events travel through one posthog client per server process, whose single
consumer thread sends them in order. `flush_events` makes a request that
captures a marker event and waits for it, so everything the server enqueued
before has reached the sink too: that is how absence ("no second alias") is
asserted without sleeping.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from posthog_identity.signing import CookieState
from posthog_identity.testing import Sink
from tests.helpers.project import API_KEY
from tests.helpers.servers import (
    EVENT_TIMEOUT,
    NoCookies,
    Server,
    checking_test,
    serving,
    start_app,
    wait_for_events,
)
from tests.helpers.wire import (
    ALIAS,
    COOKIE,
    PERSONLESS,
    identity_set_cookies,
    read_cookie,
)


def start_server(kind: str, sink: Sink, log_dir: Path) -> Server:
    """Start `kind` serving `tests.sites.basic` on a free port; another one if it was taken."""
    return start_app(kind, sink, log_dir)


@pytest.fixture(scope="module", params=["gunicorn", "uvicorn"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    kind = str(request.param)
    with Sink() as sink:
        yield from serving(start_server(kind, sink, tmp_path_factory.mktemp(kind)))


@pytest.fixture(autouse=True)
def _no_server_errors(server: Server) -> Iterator[None]:
    """Each test fails if the server logged an error while it ran."""
    yield from checking_test(server)


class Browser:
    """One visitor: keeps the identity cookie by hand, follows no redirects."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.cookie: str | None = None
        self.http = httpx.Client(
            base_url=server.url, follow_redirects=False, timeout=10.0, cookies=NoCookies()
        )

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def headers(self, user: str | None = None) -> dict[str, str]:
        headers = {}
        if self.cookie is not None:
            headers["Cookie"] = f"{COOKIE}={self.cookie}"
        if user is not None:
            headers["X-User"] = user
        return headers

    def get(self, path: str, *, user: str | None = None) -> httpx.Response:
        reply = self.http.get(path, headers=self.headers(user))
        assert not self.http.cookies, "httpx kept a cookie"
        for cookie in identity_set_cookies(reply):
            self.cookie = cookie.value
        return reply

    @property
    def state(self) -> CookieState:
        assert self.cookie is not None, "no identity cookie yet"
        return read_cookie(self.cookie)

    def login(self, user: str) -> CookieState:
        """Visit anonymously (if new), then log in; returns the pre-login state."""
        if self.cookie is None:
            assert self.get("/").status_code == 200
        before = self.state
        reply = self.get(f"/login?user={user}")
        assert reply.status_code == 302, reply.text
        return before


@pytest.fixture
def browser(server: Server) -> Iterator[Browser]:
    with Browser(server) as visitor:
        yield visitor


def new_user() -> str:
    return f"user-{uuid.uuid4()}"


def flush_events(server: Server) -> None:
    """Return once everything the server has enqueued so far reached the sink.

    A fresh visitor captures "Home Viewed" under a new anonymous id; the
    server's posthog client sends its queue in order from one thread, so when
    that event arrives, every event enqueued before it has arrived too.
    """
    with Browser(server) as marker:
        assert marker.get("/").status_code == 200
        wait_for_events(server, "Home Viewed", marker.state.anonymous_id)


def aliases(server: Server, *, user: str) -> list[dict[str, Any]]:
    return server.sink.events(event=ALIAS, distinct_id=user)


# 1
def test_first_visit_sets_one_httponly_lax_cookie(browser: Browser) -> None:
    reply = browser.get("/")

    assert reply.status_code == 200
    cookies = identity_set_cookies(reply)
    assert len(cookies) == 1, reply.headers.get_list("set-cookie")
    attributes = cookies[0].attributes
    assert "httponly" in attributes
    assert attributes.get("path") == "/"
    assert (attributes.get("samesite") or "").lower() == "lax"
    assert "secure" not in attributes  # plain http, COOKIE_SECURE=auto
    assert attributes.get("max-age") == "31536000"
    state = read_cookie(cookies[0].value)
    assert uuid.UUID(state.anonymous_id)
    assert state.user_hash is None


# 2
def test_return_visit_gets_no_set_cookie(browser: Browser) -> None:
    browser.get("/")
    first = browser.state

    reply = browser.get("/")

    assert reply.status_code == 200
    assert reply.headers.get_list("set-cookie") == []
    assert browser.state == first


# 3
def test_login_sends_one_alias_linking_anonymous_id_into_user(
    server: Server, browser: Browser
) -> None:
    user = new_user()
    browser.get("/")
    anonymous_id = browser.state.anonymous_id

    reply = browser.get(f"/login?user={user}")

    assert reply.status_code == 302
    assert reply.headers["location"] == "/"
    assert len(identity_set_cookies(reply)) == 1
    after = browser.state
    assert after.anonymous_id == anonymous_id
    assert after.user_hash is not None
    assert after.linked
    wait_for_events(server, ALIAS, user)
    flush_events(server)
    [alias] = aliases(server, user=user)
    assert alias["distinct_id"] == user
    assert alias["properties"]["alias"] == anonymous_id
    assert PERSONLESS not in alias["properties"]
    assert alias["api_key"] == API_KEY


# 4
def test_requests_after_login_capture_as_user_without_another_alias(
    server: Server, browser: Browser
) -> None:
    user = new_user()
    browser.login(user)

    for _ in range(3):
        reply = browser.get("/", user=user)
        assert reply.status_code == 200
        assert reply.headers.get_list("set-cookie") == []

    views = wait_for_events(server, "Home Viewed", user, count=3)
    assert len(views) == 3
    assert all(view["distinct_id"] == user for view in views)
    flush_events(server)
    assert len(aliases(server, user=user)) == 1


# 5
def test_logout_mints_a_new_anonymous_id(browser: Browser) -> None:
    user = new_user()
    before = browser.login(user)

    reply = browser.get("/logout", user=user)

    assert reply.status_code == 302
    assert len(identity_set_cookies(reply)) == 1
    after = browser.state
    assert after.anonymous_id != before.anonymous_id
    assert after.user_hash is None
    assert not after.linked


# 6
def test_account_switch_mints_a_new_id_and_sends_no_alias(server: Server, browser: Browser) -> None:
    first, second = new_user(), new_user()
    before = browser.login(first)

    reply = browser.get("/", user=second)

    assert reply.status_code == 200
    assert len(identity_set_cookies(reply)) == 1
    after = browser.state
    assert after.anonymous_id != before.anonymous_id
    assert after.user_hash is not None
    wait_for_events(server, "Home Viewed", second)
    flush_events(server)
    assert aliases(server, user=second) == []
    links_of_new_id = [
        e for e in server.sink.events(event=ALIAS) if e["properties"]["alias"] == after.anonymous_id
    ]
    assert links_of_new_id == []
    assert len(aliases(server, user=first)) == 1


# 7
def test_tampered_cookie_gets_a_fresh_id(browser: Browser) -> None:
    browser.get("/")
    original = browser.state
    assert browser.cookie is not None
    # Change a character inside the signed payload (never the last one, whose
    # spare base64 bits might not count).
    value = browser.cookie
    middle = len(value) // 4
    swapped = "B" if value[middle] != "B" else "C"
    browser.cookie = value[:middle] + swapped + value[middle + 1 :]

    reply = browser.get("/")

    assert reply.status_code == 200
    assert reply.text == "home"
    assert len(identity_set_cookies(reply)) == 1
    assert browser.state.anonymous_id != original.anonymous_id


# 8
def test_excluded_static_path_gets_no_set_cookie(browser: Browser) -> None:
    reply = browser.get("/static/app.css")

    assert reply.status_code == 200
    assert reply.text == "body{}"
    assert reply.headers.get_list("set-cookie") == []


# 9
def test_concurrent_logins_with_one_cookie_send_one_alias(server: Server) -> None:
    user = new_user()
    with Browser(server) as visitor:
        visitor.get("/")
        pre_login = visitor.headers()
        anonymous_id = visitor.state.anonymous_id
    start = threading.Barrier(2)

    def log_in(http: httpx.Client) -> httpx.Response:
        # Warm the keep-alive connection first (an excluded path: no events),
        # so the two logins leave at the same moment.
        assert http.get("/static/app.css").status_code == 200
        start.wait(timeout=EVENT_TIMEOUT)
        return http.get(f"/login?user={user}", headers=pre_login)

    clients = [
        httpx.Client(base_url=server.url, follow_redirects=False, timeout=10.0, cookies=NoCookies())
        for _ in range(2)
    ]
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            replies = list(pool.map(log_in, clients))
    finally:
        for http in clients:
            http.close()

    for reply in replies:
        assert reply.status_code == 302
        [cookie] = identity_set_cookies(reply)
        state = read_cookie(cookie.value)
        assert state.anonymous_id == anonymous_id
        assert state.user_hash is not None
    wait_for_events(server, "Logged In", user, count=2)
    flush_events(server)
    found = aliases(server, user=user)
    assert [e["properties"]["alias"] for e in found] == [anonymous_id]


# 10
def test_anonymous_server_capture_is_personless(server: Server, browser: Browser) -> None:
    browser.get("/")
    anonymous_id = browser.state.anonymous_id

    [view] = wait_for_events(server, "Home Viewed", anonymous_id)

    assert view["properties"][PERSONLESS] is False


def test_server_capture_after_login_processes_the_person(server: Server, browser: Browser) -> None:
    user = new_user()
    browser.login(user)

    browser.get("/", user=user)

    [view] = wait_for_events(server, "Home Viewed", user)
    assert view["properties"].get(PERSONLESS, True) is not False
