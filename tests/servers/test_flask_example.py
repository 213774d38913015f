"""The Flask example (`examples/flask_app.py`, `init_app`) under real servers.

Runs the example under gunicorn and waitress as subprocesses started at the same
time, configured by environment variables (started, stopped and checked with
`tests.helpers.servers`), and walks visitors through the identity lifecycle over
HTTP with httpx clients that keep the cookies (the Flask session and ours) like a
browser. The example sends its captures with posthog's module-level client and
the middleware sends the alias with its own client; each sends in order from one
thread, so `flush_events` waits for a fresh marker through both before absence
is asserted. The tests that wait for those clients walk at the same time (`waited`).
"""

from __future__ import annotations

import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

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

T = TypeVar("T")

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


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Server]]]:
    """`examples/flask_app.py` under gunicorn and waitress, started at the same time,
    each sending to its own sink; a failed start fails its own server's tests.
    Stopped (and checked) at the module's end."""
    kinds = ("gunicorn", "waitress")
    directories = {kind: tmp_path_factory.mktemp(f"flask-{kind}") for kind in kinds}
    with ExitStack() as stack:
        sinks = {kind: stack.enter_context(Sink()) for kind in kinds}
        with ThreadPoolExecutor(len(kinds)) as pool:
            starting = {
                kind: pool.submit(_start_example, kind, sinks[kind], directories[kind])
                for kind in kinds
            }
        for kind, started in starting.items():
            if started.exception() is None:
                stack.enter_context(contextmanager(serving)(started.result(), _stop_signal(kind)))
        yield starting


@pytest.fixture(scope="module")
def example(servers: dict[str, Future[Server]]) -> Server:
    """The example under gunicorn (gthread), where each behaviour is specified."""
    return servers["gunicorn"].result()


@pytest.fixture(scope="module")
def waitress_example(servers: dict[str, Future[Server]]) -> Server:
    return servers["waitress"].result()


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


# ---------------------------------------------------------------------------
# The tests that wait for the servers' clients
#
# Each waits for events that the example's posthog clients send after batching
# for up to 5 s (posthog's defaults). `waited` walks their visitors, each in its
# own thread, at the same time: the servers' clients are waited for once. The
# tests assert on what each walk saw and on the sinks.


def _walk(server: Server, walk: Callable[[Visitor], T]) -> T:
    """`walk` a new visitor of `server`; fails if the server logged an error meanwhile."""
    with Visitor(server) as visitor:
        seen = walk(visitor)
    visitor.check_server_log()
    return seen


def _log_in_then_flush(example: Server, visitor: Visitor) -> tuple[str, str]:
    name, anonymous = logged_in(visitor)
    flush_events(example)
    return name, anonymous


def _page_as_the_user(example: Server, visitor: Visitor) -> list[dict[str, Any]]:
    name, _ = logged_in(visitor)
    visitor.page()
    return wait_for_events(example, "home viewed", name)


def _three_pages_as_the_user(example: Server, visitor: Visitor) -> str:
    name, _ = logged_in(visitor)
    for _ in range(3):
        visitor.page()
    flush_events(example)
    return name


def _pages_around_logout(example: Server, visitor: Visitor) -> tuple[str, str]:
    """A page as the user, logout, a page; returns (user id, new anonymous id)."""
    name, _ = logged_in(visitor)
    visitor.page()
    visitor.log_out()
    visitor.page()
    flush_events(example)
    return name, visitor.identity.anonymous_id


@dataclass(frozen=True)
class Lifecycle:
    """One visitor's pages under waitress: first visit, login, as the user, after logout."""

    name: str
    first: httpx.Response
    login: httpx.Response
    as_user: httpx.Response
    after: httpx.Response
    fresh: str  # the anonymous id after logout


def _lifecycle(server: Server, visitor: Visitor) -> Lifecycle:
    name = new_name()
    first = visitor.page()
    login = visitor.log_in(name)
    as_user = visitor.page()
    visitor.log_out()
    after = visitor.page()
    fresh = visitor.identity.anonymous_id
    flush_events(server)
    return Lifecycle(name, first, login, as_user, after, fresh)


@dataclass(frozen=True)
class Waited:
    """Each waiting test's walk, or its failure."""

    alias: Future[tuple[str, str]]
    capture: Future[list[dict[str, Any]]]
    no_second_alias: Future[str]
    logout: Future[tuple[str, str]]
    waitress: Future[Lifecycle]


@pytest.fixture(scope="module")
def waited(servers: dict[str, Future[Server]]) -> Iterator[Waited]:
    """Each walk on its server once started (a failed start fails its walks)."""
    with ThreadPoolExecutor(5) as pool:

        def walking(kind: str, walk: Callable[[Server, Visitor], T]) -> Future[T]:
            def walked() -> T:
                server = servers[kind].result()
                return _walk(server, partial(walk, server))

            return pool.submit(walked)

        yield Waited(
            alias=walking("gunicorn", _log_in_then_flush),
            capture=walking("gunicorn", _page_as_the_user),
            no_second_alias=walking("gunicorn", _three_pages_as_the_user),
            logout=walking("gunicorn", _pages_around_logout),
            waitress=walking("waitress", _lifecycle),
        )


def test_example_login_sends_exactly_one_alias_linking_the_anonymous_id_into_the_user(
    example: Server, waited: Waited
) -> None:
    name, anonymous = waited.alias.result()  # logged in, then flushed

    [alias] = example.sink.events(event=ALIAS, distinct_id=name)
    assert alias["properties"]["alias"] == anonymous
    assert alias["properties"].get("$process_person_profile", True) is not False


def test_example_page_as_the_user_bootstraps_the_user_id(visitor: Visitor) -> None:
    name, anonymous = logged_in(visitor)

    reply = visitor.page()

    assert identity_set_cookies(reply) == []
    assert bootstrap(reply) == {"anonymous": anonymous, "user": name, "signedIn": True}


def test_example_server_capture_as_the_user_carries_the_user_id(waited: Waited) -> None:
    [view] = waited.capture.result()  # the user's page view, once it arrived
    assert view["properties"]["signed_in"] is True


def test_example_pages_as_the_user_send_no_second_alias(example: Server, waited: Waited) -> None:
    name = waited.no_second_alias.result()  # logged in, three pages, flushed

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
    example: Server, waited: Waited
) -> None:
    name, fresh = waited.logout.result()  # a page as the user, logout, a page, flushed

    on_user = example.sink.events(distinct_id=name)
    assert sorted(e["event"] for e in on_user) == [ALIAS, "home viewed"]
    [after_logout] = example.sink.events(event="home viewed", distinct_id=fresh)
    assert after_logout["properties"]["signed_in"] is False


def test_example_lifecycle_under_waitress(waitress_example: Server, waited: Waited) -> None:
    walk = waited.waitress.result()
    name = walk.name
    [cookie] = identity_set_cookies(walk.first)
    anonymous = read_cookie(cookie.value).anonymous_id
    assert bootstrap(walk.first) == {"anonymous": anonymous, "user": None, "signedIn": False}

    names = [parse_set_cookie(h).name for h in walk.login.headers.get_list("set-cookie")]
    assert sorted(names) == [COOKIE, "session"]
    assert bootstrap(walk.as_user) == {"anonymous": anonymous, "user": name, "signedIn": True}

    fresh = walk.fresh
    assert fresh != anonymous
    assert bootstrap(walk.after) == {"anonymous": fresh, "user": None, "signedIn": False}

    [alias] = waitress_example.sink.events(event=ALIAS, distinct_id=name)
    assert alias["properties"]["alias"] == anonymous
    [view] = waitress_example.sink.events(event="home viewed", distinct_id=name)
    assert view["properties"]["signed_in"] is True
    assert sorted(e["event"] for e in waitress_example.sink.events(distinct_id=name)) == [
        ALIAS,
        "home viewed",
    ]
    assert len(waitress_example.sink.events(event="home viewed", distinct_id=fresh)) == 1
