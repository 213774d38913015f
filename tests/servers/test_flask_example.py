"""The Flask example (`examples/flask_app.py`, `init_app`) under real servers.

Runs the example under gunicorn and waitress as subprocesses, configured by
environment variables (started, stopped and checked with `tests.helpers.servers`),
and walks one visitor through the identity lifecycle over HTTP with an httpx
client that keeps the cookies (the Flask session and ours) like a browser. The
example sends its captures with posthog's module-level client and the
middleware sends the alias with its own client; each sends in order from one
thread, so `flush_events` waits for a fresh marker through both before absence
is asserted.
"""

from __future__ import annotations

import signal
import sys
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from posthog_identity.signing import CookieState
from posthog_identity.testing import Sink
from tests.helpers.pages import snippet_options
from tests.helpers.servers import (
    Server,
    check_errors,
    gunicorn_command,
    server_environment,
    serving,
    start_process,
    wait_for_events,
    wait_until_ready,
)
from tests.helpers.wire import ALIAS, COOKIE, identity_set_cookies, parse_set_cookie, read_cookie

# ---------------------------------------------------------------------------
# The example app under real servers

EXAMPLE = "examples.flask_app:app"
READY_PATH = "/login"  # the example's form: answers 200 and captures nothing


def _example_command(kind: str, port: int) -> list[str]:
    if kind == "waitress":
        return [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", EXAMPLE]
    return gunicorn_command(EXAMPLE, port)


def _stop_signal(kind: str) -> signal.Signals:
    """How to stop the server so that it flushes its events.

    Python has no SIGTERM handler of its own, so waitress would die without
    running atexit (the flush); SIGINT ends its loop cleanly.
    """
    return signal.SIGINT if kind == "waitress" else signal.SIGTERM


def _start_example(kind: str, sink: Sink, log_dir: Path) -> Server:
    started = start_process(
        kind,
        partial(_example_command, kind),
        server_environment(sink.url),
        log_dir,
        how=_stop_signal(kind),
        wait=partial(wait_until_ready, kind, path=READY_PATH),
    )
    return Server(kind, started.url, sink, started.process, started.log)


def _serve_example(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`examples/flask_app.py` under `kind`, sending to its own sink."""
    with Sink() as sink:
        running = _start_example(kind, sink, tmp_path_factory.mktemp(f"flask-{kind}"))
        yield from serving(running, _stop_signal(kind))


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The example under gunicorn (gthread), where each behaviour is specified."""
    yield from _serve_example("gunicorn", tmp_path_factory)


@pytest.fixture(scope="module")
def waitress_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _serve_example("waitress", tmp_path_factory)


class Visitor:
    """One browser: httpx keeps its cookies (the Flask session and ours)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.url, follow_redirects=False, timeout=10.0)

    def __enter__(self) -> Visitor:
        self.log_start = self.server.log.stat().st_size
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    @property
    def identity(self) -> CookieState:
        value = self.http.cookies.get(COOKIE)
        assert value is not None, "no identity cookie yet"
        return read_cookie(value)

    def page(self, path: str = "/") -> httpx.Response:
        reply = self.http.get(path)
        assert reply.status_code == 200, reply.text
        return reply

    def log_in(self, name: str) -> httpx.Response:
        reply = self.http.post("/login", data={"name": name})
        assert reply.status_code == 302, reply.text
        return reply

    def log_out(self) -> httpx.Response:
        reply = self.http.get("/logout")
        assert reply.status_code == 302, reply.text
        return reply

    def check_server_log(self) -> None:
        """Fail if the server logged an error since this visitor arrived."""
        check_errors(self.server, "during the test", since=self.log_start)
        self.server.log_size_at_teardown = self.server.log.stat().st_size


@pytest.fixture
def visitor(example: Server) -> Iterator[Visitor]:
    """A new visitor of the gunicorn example; the test fails if the server logged an error."""
    with Visitor(example) as browser:
        yield browser
    browser.check_server_log()


def new_name() -> str:
    return f"ada-{uuid.uuid4().hex[:12]}"


def bootstrap(reply: httpx.Response) -> dict[str, Any]:
    """The identity the page's snippet hands to posthog-js."""
    identity: dict[str, Any] = snippet_options(reply.content)["identity"]
    return identity


def flush_events(server: Server) -> None:
    """Return once everything the server's client enqueued reached the sink.

    A fresh visitor's page view and its login link go through the one client
    (posthog's module-level client, which the middleware uses too), which
    sends in order from one thread.
    """
    name = new_name()
    with Visitor(server) as marker:
        marker.page()
        anonymous = marker.identity.anonymous_id
        marker.log_in(name)
    wait_for_events(server, "home viewed", anonymous)
    wait_for_events(server, ALIAS, name)


def logged_in(visitor: Visitor) -> tuple[str, str]:
    """Visit, then log in as a new user; returns (user id, pre-login anonymous id)."""
    visitor.page()
    anonymous = visitor.identity.anonymous_id
    name = new_name()
    visitor.log_in(name)
    return name, anonymous


def test_example_first_visit_sets_the_cookie_and_bootstraps_its_anonymous_id(
    visitor: Visitor,
) -> None:
    reply = visitor.page()

    [cookie] = identity_set_cookies(reply)
    state = read_cookie(cookie.value)
    assert uuid.UUID(state.anonymous_id)
    assert bootstrap(reply) == {"anonymous": state.anonymous_id, "user": None, "signedIn": False}


def test_example_login_sets_the_flask_session_and_the_linked_identity_cookie(
    visitor: Visitor,
) -> None:
    visitor.page()
    before = visitor.identity

    reply = visitor.log_in(new_name())

    names = [parse_set_cookie(h).name for h in reply.headers.get_list("set-cookie")]
    assert sorted(names) == [COOKIE, "session"]
    after = visitor.identity
    assert after.anonymous_id == before.anonymous_id
    assert after.user_hash is not None
    assert after.linked


def test_example_login_sends_exactly_one_alias_linking_the_anonymous_id_into_the_user(
    example: Server, visitor: Visitor
) -> None:
    name, anonymous = logged_in(visitor)

    flush_events(example)

    [alias] = example.sink.events(event=ALIAS, distinct_id=name)
    assert alias["properties"]["alias"] == anonymous
    assert alias["properties"].get("$process_person_profile", True) is not False


def test_example_page_as_the_user_bootstraps_the_user_id(visitor: Visitor) -> None:
    name, anonymous = logged_in(visitor)

    reply = visitor.page()

    assert identity_set_cookies(reply) == []
    assert bootstrap(reply) == {"anonymous": anonymous, "user": name, "signedIn": True}


def test_example_server_capture_as_the_user_carries_the_user_id(
    example: Server, visitor: Visitor
) -> None:
    name, _ = logged_in(visitor)

    visitor.page()

    [view] = wait_for_events(example, "home viewed", name)
    assert view["properties"]["signed_in"] is True


def test_example_pages_as_the_user_send_no_second_alias(example: Server, visitor: Visitor) -> None:
    name, _ = logged_in(visitor)

    for _ in range(3):
        visitor.page()

    flush_events(example)
    assert len(example.sink.events(event="home viewed", distinct_id=name)) == 3
    assert len(example.sink.events(event=ALIAS, distinct_id=name)) == 1


def test_example_logout_moves_the_next_page_to_a_new_anonymous_id(visitor: Visitor) -> None:
    _, anonymous = logged_in(visitor)

    visitor.log_out()
    reply = visitor.page()

    after = visitor.identity
    assert after.anonymous_id != anonymous
    assert after.user_hash is None
    assert bootstrap(reply) == {"anonymous": after.anonymous_id, "user": None, "signedIn": False}


def test_example_nothing_is_captured_on_the_user_id_after_logout(
    example: Server, visitor: Visitor
) -> None:
    name, _ = logged_in(visitor)
    visitor.page()

    visitor.log_out()
    visitor.page()

    flush_events(example)
    on_user = example.sink.events(distinct_id=name)
    assert sorted(e["event"] for e in on_user) == [ALIAS, "home viewed"]
    [after_logout] = example.sink.events(
        event="home viewed", distinct_id=visitor.identity.anonymous_id
    )
    assert after_logout["properties"]["signed_in"] is False


def test_example_lifecycle_under_waitress(waitress_example: Server) -> None:
    name = new_name()
    with Visitor(waitress_example) as visitor:
        first = visitor.page()
        [cookie] = identity_set_cookies(first)
        anonymous = read_cookie(cookie.value).anonymous_id
        assert bootstrap(first) == {"anonymous": anonymous, "user": None, "signedIn": False}

        login = visitor.log_in(name)
        names = [parse_set_cookie(h).name for h in login.headers.get_list("set-cookie")]
        assert sorted(names) == [COOKIE, "session"]
        as_user = visitor.page()
        assert bootstrap(as_user) == {"anonymous": anonymous, "user": name, "signedIn": True}

        visitor.log_out()
        after = visitor.page()
        fresh = visitor.identity.anonymous_id
        assert fresh != anonymous
        assert bootstrap(after) == {"anonymous": fresh, "user": None, "signedIn": False}

        flush_events(waitress_example)
        [alias] = waitress_example.sink.events(event=ALIAS, distinct_id=name)
        assert alias["properties"]["alias"] == anonymous
        [view] = waitress_example.sink.events(event="home viewed", distinct_id=name)
        assert view["properties"]["signed_in"] is True
        assert sorted(e["event"] for e in waitress_example.sink.events(distinct_id=name)) == [
            ALIAS,
            "home viewed",
        ]
        assert len(waitress_example.sink.events(event="home viewed", distinct_id=fresh)) == 1
    visitor.check_server_log()
