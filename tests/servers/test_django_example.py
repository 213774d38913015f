"""The Django example (`examples/django_project`) under real servers.

The example runs under gunicorn (WSGI), uvicorn and hypercorn (ASGI) in
subprocesses, with its own SQLite file and a `Sink` as its PostHog. One visitor
walks through it once per server, as a browser would (our cookie, Django's
session and CSRF cookies kept by hand): an anonymous visit, a login form, a
page as the user, a logout, a page after it. The tests below each check one
behaviour of that walk. The user's primary key is read from the server's
database file, not from its pages. Last, a SIGTERM right after a login under
uvicorn.

Events travel through one posthog client per server process (the example
shares posthog's module-level client with the middleware), whose single
consumer sends them in order; a marker login after the walk, whose link
arrives last, shows that everything the walk enqueued has arrived, so
absence ("no second alias") is asserted without sleeping.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from posthog_identity.signing import CookieCodec, CookieState
from posthog_identity.testing import Sink
from tests.helpers.pages import snippet_options
from tests.helpers.project import SECRET
from tests.helpers.servers import (
    EVENT_TIMEOUT,
    STOP_TIMEOUT,
    NoCookies,
    Server,
    check_errors,
    check_stopped,
    gunicorn_command,
    server_environment,
    start_process,
    stop_process,
    wait_until_ready,
)
from tests.helpers.wire import ALIAS, COOKIE, PERSONLESS, distinct_id, parse_set_cookie, read_cookie

PAGE_VIEWED = "Page Viewed"
LOGGED_IN = "Logged In"  # captured by the login view right after login()
LOGGED_OUT = "Logged Out"  # captured by the logout view right after logout()
CSRF_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')

# ---------------------------------------------------------------------------
# The example under real servers

SERVERS = ["gunicorn", "uvicorn", "hypercorn"]


def _command(kind: str, port: int) -> list[str]:
    if kind == "gunicorn":
        return gunicorn_command("examples.django_project.wsgi:application", port)
    if kind == "uvicorn":
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "examples.django_project.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--timeout-graceful-shutdown",
            "10",
        ]
    return [
        sys.executable,
        "-m",
        "hypercorn",
        "examples.django_project.asgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "10",
    ]


@dataclass
class Example:
    server: Server
    database: Path

    def pk(self, username: str) -> str:
        """The user's primary key, read from the server's database file."""
        with closing(sqlite3.connect(self.database)) as db:
            row = db.execute("SELECT id FROM auth_user WHERE username = ?", (username,)).fetchone()
        assert row is not None, f"no user {username!r} in the database"
        return str(row[0])


def _start(kind: str, sink: Sink, directory: Path) -> Example:
    database = directory / "db.sqlite3"
    env = server_environment(sink.url)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["DJANGO_EXAMPLE_DB"] = str(database)
    started = start_process(
        kind,
        partial(_command, kind),
        env,
        directory,
        # Ready once our process logged its port and the login form answers.
        wait=partial(wait_until_ready, kind, path="/login/"),
    )
    return Example(Server(kind, started.url, sink, started.process, started.log), database)


class Browser:
    """One visitor: keeps every cookie the server sets, by hand; follows no redirects."""

    def __init__(self, url: str) -> None:
        self.cookies: dict[str, str] = {}
        self.http = httpx.Client(
            base_url=url, follow_redirects=False, timeout=10.0, cookies=NoCookies()
        )

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def request(self, method: str, url: str, data: dict[str, str] | None = None) -> httpx.Response:
        headers = {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        reply = self.http.request(method, url, headers=headers, data=data)
        assert not self.http.cookies, "httpx kept a cookie"
        for header in reply.headers.get_list("set-cookie"):
            cookie = parse_set_cookie(header)
            if cookie.attributes.get("max-age") == "0":
                self.cookies.pop(cookie.name, None)
            else:
                self.cookies[cookie.name] = cookie.value
        return reply

    def post_form(self, form_page: str, url: str, **fields: str) -> httpx.Response:
        """Submit a form the way a browser does: with the CSRF token of its page."""
        page = self.request("GET", form_page)
        match = CSRF_FIELD.search(page.text)
        assert match is not None, f"no CSRF token on {form_page}"
        return self.request("POST", url, {"csrfmiddlewaretoken": match.group(1), **fields})

    @property
    def state(self) -> CookieState:
        return read_cookie(self.cookies[COOKIE])


def identity_cookies(reply: httpx.Response) -> list[str]:
    parsed = [parse_set_cookie(h) for h in reply.headers.get_list("set-cookie")]
    return [c.value for c in parsed if c.name == COOKIE]


def bootstrap(reply: httpx.Response) -> dict[str, Any]:
    """The identity the page's snippet puts posthog-js on."""
    identity: dict[str, Any] = snippet_options(reply.content)["identity"]
    return identity


@dataclass
class Walk:
    """What one visitor saw and what the sink got, once per server."""

    example: Example
    pk: str
    first_visit: httpx.Response
    anonymous: CookieState  # after the first visit
    login: httpx.Response
    logged_in: CookieState
    page: httpx.Response  # as the user
    logout: httpx.Response
    logged_out: CookieState
    after_logout: httpx.Response  # the page again
    events: list[dict[str, Any]]  # everything the sink received, marker included
    marker_pk: str

    def events_of(self, distinct: str, event: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if distinct_id(e) == distinct and (event is None or e["event"] == event)
        ]


def _log_in(browser: Browser, example: Example) -> tuple[httpx.Response, str]:
    username = f"user-{uuid.uuid4()}"
    reply = browser.post_form("/login/", "/login/", username=username)
    assert reply.status_code == 302, reply.text
    return reply, example.pk(username)


def _walk(example: Example) -> Walk:
    sink = example.server.sink
    with Browser(example.server.url) as browser:
        first_visit = browser.request("GET", "/")
        anonymous = browser.state
        login, pk = _log_in(browser, example)
        logged_in = browser.state
        page = browser.request("GET", "/page/")
        assert browser.request("GET", "/").status_code == 200
        logout = browser.post_form("/", "/logout/")
        logged_out = browser.state
        after_logout = browser.request("GET", "/page/")
    # A marker login, enqueued after everything above: once its link arrived, all did.
    with Browser(example.server.url) as marker:
        marker.request("GET", "/")
        _, marker_pk = _log_in(marker, example)
    sink.wait_for(
        lambda found: any(distinct_id(e) == marker_pk for e in found),
        event=ALIAS,
        timeout=EVENT_TIMEOUT,
    )
    return Walk(
        example,
        pk,
        first_visit,
        anonymous,
        login,
        logged_in,
        page,
        logout,
        logged_out,
        after_logout,
        sink.events(),
        marker_pk,
    )


@pytest.fixture(scope="module")
def walks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Walk]]]:
    """The example under every server, each started and walked at the same time.

    A walk ends waiting for its server's posthog client, which batches for up to
    5 s (posthog's default): the servers wait once, together. Each server has
    its own sink and database; a failed start or walk fails its own tests.
    """
    directories = {kind: tmp_path_factory.mktemp(f"django-{kind}") for kind in SERVERS}
    started: dict[str, Example] = {}

    def start_and_walk(kind: str, sink: Sink) -> Walk:
        started[kind] = _start(kind, sink, directories[kind])
        return _walk(started[kind])

    with ExitStack() as sinks:
        try:
            with ThreadPoolExecutor(len(SERVERS)) as pool:
                walked = {
                    kind: pool.submit(start_and_walk, kind, sinks.enter_context(Sink()))
                    for kind in SERVERS
                }
            yield walked
        finally:
            killed = {kind: stop_process(ex.server.process) for kind, ex in started.items()}
    # Reported at the teardown of the module's last test.
    for kind, example in started.items():
        check_stopped(kind, example.server.log, killed[kind])


@pytest.fixture(scope="module", params=SERVERS)
def walk(request: pytest.FixtureRequest, walks: dict[str, Future[Walk]]) -> Walk:
    return walks[str(request.param)].result()


def test_the_example_logs_no_error(walk: Walk) -> None:
    server = walk.example.server
    check_errors(server, "during the walk")
    assert "posthog_identity:" not in server.output()


def test_anonymous_visit_bootstraps_the_snippet_with_the_cookie_anonymous_id(walk: Walk) -> None:
    reply = walk.first_visit

    assert reply.status_code == 200
    [cookie] = identity_cookies(reply)
    assert bootstrap(reply) == {
        "anonymous": read_cookie(cookie).anonymous_id,
        "user": None,
        "signedIn": False,
    }
    assert uuid.UUID(walk.anonymous.anonymous_id)


def test_login_sends_one_alias_linking_the_anonymous_id_into_the_user_pk(walk: Walk) -> None:
    [alias] = walk.events_of(walk.pk, ALIAS)

    assert alias["properties"]["alias"] == walk.anonymous.anonymous_id
    assert PERSONLESS not in alias["properties"]


def test_login_keeps_the_anonymous_id_in_a_cookie_that_remembers_the_user(walk: Walk) -> None:
    codec = CookieCodec((SECRET,))

    assert len(identity_cookies(walk.login)) == 1
    assert walk.logged_in.anonymous_id == walk.anonymous.anonymous_id
    assert walk.logged_in.user_hash == codec.user_hash(walk.pk)
    assert walk.logged_in.linked


def test_page_as_the_user_bootstraps_the_snippet_with_the_user_pk(walk: Walk) -> None:
    assert walk.page.status_code == 200
    assert bootstrap(walk.page) == {
        "anonymous": walk.anonymous.anonymous_id,
        "user": walk.pk,
        "signedIn": True,
    }


def test_server_capture_as_the_user_carries_the_user_pk(walk: Walk) -> None:
    [view] = walk.events_of(walk.pk, PAGE_VIEWED)

    assert view["properties"]["path"] == "/page/"
    assert view["properties"].get(PERSONLESS) is not False


def test_pages_after_login_send_no_second_alias(walk: Walk) -> None:
    links = [
        (distinct_id(e), e["properties"]["alias"])
        for e in walk.events
        if e["event"] == ALIAS and distinct_id(e) != walk.marker_pk
    ]

    assert links == [(walk.pk, walk.anonymous.anonymous_id)]


def test_logout_moves_the_visitor_to_a_new_anonymous_id(walk: Walk) -> None:
    assert walk.logout.status_code == 302
    assert len(identity_cookies(walk.logout)) == 1
    assert walk.logged_out.anonymous_id != walk.anonymous.anonymous_id
    assert walk.logged_out.user_hash is None
    assert bootstrap(walk.after_logout) == {
        "anonymous": walk.logged_out.anonymous_id,
        "user": None,
        "signedIn": False,
    }


def test_a_capture_right_after_login_in_the_view_carries_the_user_with_person_processing(
    walk: Walk,
) -> None:
    [logged_in] = walk.events_of(walk.pk, LOGGED_IN)

    assert logged_in["properties"].get(PERSONLESS) is not False
    assert walk.events_of(walk.anonymous.anonymous_id, LOGGED_IN) == []


def test_a_capture_right_after_logout_in_the_view_is_not_the_users(walk: Walk) -> None:
    [logged_out] = [e for e in walk.events if e["event"] == LOGGED_OUT]

    assert distinct_id(logged_out) == walk.logged_out.anonymous_id
    assert logged_out["properties"][PERSONLESS] is False


def test_nothing_after_logout_lands_on_the_user(walk: Walk) -> None:
    after = walk.events_of(walk.logged_out.anonymous_id)

    assert sorted(e["event"] for e in after) == [LOGGED_OUT, PAGE_VIEWED]
    assert all(e["properties"][PERSONLESS] is False for e in after)
    assert sorted(e["event"] for e in walk.events_of(walk.pk)) == [ALIAS, LOGGED_IN, PAGE_VIEWED]
    linked = [e["properties"]["alias"] for e in walk.events if e["event"] == ALIAS]
    assert walk.logged_out.anonymous_id not in linked


#: How long the slow sink below takes to answer each event it receives.
SLOW_ANSWER = 1.0


def test_sigterm_right_after_a_login_under_uvicorn_still_delivers_the_login_link(
    tmp_path: Path,
) -> None:
    """Django's ASGI handler refuses lifespan; uvicorn re-raises SIGTERM after its
    graceful shutdown, so no exit hook runs: only the lifespan shutdown the
    middleware answers itself flushes the queue. The sink answers each event
    after a second, so the link is still queued when SIGTERM arrives."""
    with Sink(on_event=lambda event: time.sleep(SLOW_ANSWER)) as sink:
        example = _start("uvicorn", sink, tmp_path)
        process = example.server.process
        try:
            with Browser(example.server.url) as browser:
                browser.request("GET", "/page/")
                # Its page view has reached the sink, which holds the client's
                # only sending thread for a second: the link queues behind it.
                sink.wait_for(event=PAGE_VIEWED, timeout=EVENT_TIMEOUT)
                _, pk = _log_in(browser, example)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=STOP_TIMEOUT)
        finally:
            killed = stop_process(process)
        assert not killed
        links = [e for e in sink.events(event=ALIAS) if distinct_id(e) == pk]
    assert [link["properties"]["alias"] for link in links] == [browser.state.anonymous_id]
