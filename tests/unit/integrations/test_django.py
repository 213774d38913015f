"""Django: the example project under real servers, and the middleware in-process.

The example (`examples/django_project`) runs under gunicorn (WSGI), uvicorn and
hypercorn (ASGI) in subprocesses, with its own SQLite file and a `Sink` as its
PostHog. One visitor walks through it once per server, as a browser would
(our cookie, Django's session and CSRF cookies kept by hand): an anonymous
visit, a login form, a page as the user, a logout, a page after it. The
tests below each check one behaviour of that walk. The user's primary key is
read from the server's database file, not from its pages.

Events travel through one posthog client per server process (the example
shares posthog's module-level client with the middleware), whose single
consumer sends them in order; a marker login after the walk, whose link
arrives last, shows that everything the walk enqueued has arrived, so
absence ("no second alias") is asserted without sleeping.

The in-process tests configure Django lazily, in a fixture, only when nothing
else has (and then with apps any Django test would also accept); what they
change per test goes through `override_settings`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import django
import httpx
import pytest
from django.http import HttpRequest, HttpResponse
from django.urls import path

from posthog_identity import current_identity
from posthog_identity.context import bind
from posthog_identity.engine import Engine
from posthog_identity.exchange import Exchange, RequestInfo
from posthog_identity.identity import Identity, Link, Transition
from posthog_identity.integrations.django import IdentityMiddleware
from posthog_identity.settings import Settings
from posthog_identity.signing import CookieCodec, CookieState
from posthog_identity.testing import Sink
from tests.helpers.drivers import call_asgi, call_wsgi
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


@pytest.fixture(scope="module", params=SERVERS)
def example(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Example]:
    kind = str(request.param)
    with Sink() as sink:
        running = _start(kind, sink, tmp_path_factory.mktemp(f"django-{kind}"))
        try:
            yield running
        finally:
            killed = stop_process(running.server.process)
        # pytest finalizes a parametrized module fixture when the next parameter
        # is set up, so a failure here is reported at that test's setup.
        check_stopped(kind, running.server.log, killed)


@pytest.fixture(scope="module")
def walk(example: Example) -> Walk:
    return _walk(example)


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


def test_nothing_after_logout_lands_on_the_user(walk: Walk) -> None:
    [view] = walk.events_of(walk.logged_out.anonymous_id)

    assert view["event"] == PAGE_VIEWED
    assert view["properties"][PERSONLESS] is False
    assert sorted(e["event"] for e in walk.events_of(walk.pk)) == [ALIAS, PAGE_VIEWED]
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


# ---------------------------------------------------------------------------
# In-process: Django configured lazily, the middleware driven directly

DJANGO_BASE = {
    "SECRET_KEY": "django-tests-only",
    "INSTALLED_APPS": [
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
    ],
    "DATABASES": {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    "DEFAULT_AUTO_FIELD": "django.db.models.BigAutoField",
    "USE_TZ": True,
}
OUR_MIDDLEWARE = "posthog_identity.integrations.django.IdentityMiddleware"
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    OUR_MIDDLEWARE,
]


def ok_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


urlpatterns = [path("", ok_view)]


@pytest.fixture(scope="module")
def django_ready() -> None:
    from django.apps import apps
    from django.conf import settings

    if not settings.configured:
        settings.configure(**DJANGO_BASE)
    if not apps.ready:
        django.setup()


@pytest.fixture
def django_project(django_ready: None) -> Iterator[None]:
    """This module's urls and middleware, for one test; global settings are left alone."""
    from django.test.utils import override_settings

    with override_settings(
        ROOT_URLCONF=__name__, MIDDLEWARE=MIDDLEWARE, ALLOWED_HOSTS=["testserver"]
    ):
        yield


@pytest.fixture(autouse=True)
def _fresh_process_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the middleware logged once, and whether it saw the wrapper, is per process."""
    from posthog_identity.integrations import django as integration

    monkeypatch.setattr(integration, "_process", integration._Process())


@pytest.fixture
def identity_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="posthog_identity")
    return caplog


def our_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    """What the Django middleware logged (the engine may log its own things)."""
    return [
        r
        for r in caplog.records
        if r.name == "posthog_identity" and r.module == "django" and r.levelno == level
    ]


class User:
    """What the middleware reads of a Django user model instance."""

    def __init__(self, pk: object, *, authenticated: bool = True) -> None:
        self.pk = pk
        self.is_authenticated = authenticated


ANONYMOUS = User(None, authenticated=False)


class Request:
    """What AuthenticationMiddleware leaves on a request: a user and its async accessor."""

    def __init__(self, user: object) -> None:
        self.user = user
        self._user = user

    async def auser(self) -> object:
        return self._user


class Untouchable:
    """The lazy request.user in async mode: evaluating it from the event loop fails."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"request.user.{name} read from the event loop")


class BrokenUser:
    @property
    def is_authenticated(self) -> bool:
        raise ConnectionError("the session store is down")


CODEC = CookieCodec((SECRET,))
ANONYMOUS_ID = str(uuid.UUID(int=1))
RESPONSE = "the view's response"


def signed_in_cookie(user_id: str) -> str:
    state = CookieState(ANONYMOUS_ID, CODEC.user_hash(user_id), True, int(time.time()))
    return f"{COOKIE}={CODEC.dumps(state)}"


def anonymous_cookie() -> str:
    return f"{COOKIE}={CODEC.dumps(CookieState(ANONYMOUS_ID, None, False, int(time.time())))}"


def log_in(request: Request) -> None:
    """What django.contrib.auth.login() does to the request: another user object."""
    request.user = User(99)


def log_out(request: Request) -> None:
    """What django.contrib.auth.logout() does to the request."""
    request.user = ANONYMOUS


def nothing(request: Request) -> None:
    pass


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def middleware_for(mode: str, in_view: Callable[[Any], None] = nothing) -> IdentityMiddleware:
    """Our middleware in `mode`, around a view that does `in_view(request)`."""
    if mode == "sync":

        def view(request: Any) -> str:
            in_view(request)
            return RESPONSE

        return IdentityMiddleware(view)

    async def async_view(request: Any) -> str:
        in_view(request)
        return RESPONSE

    return IdentityMiddleware(async_view)


def serve(middleware: IdentityMiddleware, request: Any, cookie: str = "") -> Exchange:
    """One request through the middleware, inside a wrapper's request context."""
    engine = Engine(Settings(secrets=(SECRET,)))
    exchange = Exchange(engine, RequestInfo("GET", "http", "/", cookie))

    async def serve_async() -> object:
        with bind(exchange):
            return await middleware(request)

    if middleware.async_mode:
        response = asyncio.run(serve_async())
    else:
        with bind(exchange):
            response = middleware(request)
    assert response == RESPONSE
    return exchange


def test_without_the_wrapper_one_error_names_the_fix_and_requests_succeed(
    django_project: None, identity_log: pytest.LogCaptureFixture, mode: str
) -> None:
    from django.test import AsyncClient, Client

    if mode == "sync":
        client = Client()
        statuses = [client.get("/").status_code for _ in range(3)]
    else:

        async def visit() -> list[int]:
            client = AsyncClient()
            return [(await client.get("/")).status_code for _ in range(3)]

        statuses = asyncio.run(visit())

    assert statuses == [200, 200, 200]
    [error] = our_records(identity_log, logging.ERROR)
    message = error.getMessage()
    assert "from posthog_identity.wsgi import IdentityMiddleware" in message
    assert "application = IdentityMiddleware(get_wsgi_application())" in message
    assert "from posthog_identity.asgi import IdentityMiddleware" in message
    assert "application = IdentityMiddleware(get_asgi_application())" in message


def test_without_the_wrapper_the_error_is_logged_once_per_process(
    django_project: None, identity_log: pytest.LogCaptureFixture
) -> None:
    from django.test import Client

    for _ in range(3):  # like a test suite: a new Client, a new handler, each time
        assert Client().get("/").status_code == 200

    assert len(our_records(identity_log, logging.ERROR)) == 1


def test_a_request_bypassing_the_wrapper_after_wrapped_ones_logs_nothing(
    identity_log: pytest.LogCaptureFixture, mode: str
) -> None:
    middleware = middleware_for(mode)
    serve(middleware, Request(User(1)))

    response = middleware(Request(User(1)))  # an excluded path, say
    if middleware.async_mode:
        response = asyncio.run(response)

    assert response == RESPONSE
    assert our_records(identity_log, logging.ERROR) == []


def test_anonymous_user_reports_nobody(django_ready: None, mode: str) -> None:
    from django.contrib.auth.models import AnonymousUser

    exchange = serve(middleware_for(mode), Request(AnonymousUser()), signed_in_cookie("7"))

    assert exchange.resolution.transition is Transition.LOGOUT
    assert exchange.identity.user_id is None
    assert exchange.identity.anonymous_id != ANONYMOUS_ID


@pytest.mark.parametrize(
    ("pk", "expected"),
    [
        pytest.param(42, "42", id="int"),
        pytest.param(
            uuid.UUID("5f0c6f1e-3c1a-4d3b-9d7e-2a8e8f7c6b5a"),
            "5f0c6f1e-3c1a-4d3b-9d7e-2a8e8f7c6b5a",
            id="uuid",
        ),
        pytest.param("alice@example.com", "alice@example.com", id="str"),
    ],
)
def test_authenticated_user_is_str_of_its_pk(mode: str, pk: object, expected: str) -> None:
    exchange = serve(middleware_for(mode), Request(User(pk)), anonymous_cookie())

    assert exchange.identity == Identity(ANONYMOUS_ID, expected, True)
    assert exchange.resolution.link == Link(expected, ANONYMOUS_ID)


def test_captures_in_the_view_carry_the_user(mode: str) -> None:
    seen: list[Identity | None] = []

    serve(
        middleware_for(mode, lambda request: seen.append(current_identity())),
        Request(User(5)),
        anonymous_cookie(),
    )

    assert seen == [Identity(ANONYMOUS_ID, "5", True)]


def test_login_in_the_view_links_the_visitor_to_the_new_user(mode: str) -> None:
    exchange = serve(middleware_for(mode, log_in), Request(ANONYMOUS), anonymous_cookie())

    assert exchange.identity == Identity(ANONYMOUS_ID, "99", True)
    assert exchange.resolution.link == Link("99", ANONYMOUS_ID)


def test_logout_in_the_view_moves_the_visitor_to_a_new_anonymous_id(mode: str) -> None:
    exchange = serve(middleware_for(mode, log_out), Request(User(7)), signed_in_cookie("7"))

    assert exchange.resolution.transition is Transition.LOGOUT
    assert exchange.identity.user_id is None


def test_async_mode_reads_the_user_with_auser_never_request_user(
    identity_log: pytest.LogCaptureFixture,
) -> None:
    request = Request(User(3))
    request.user = Untouchable()

    exchange = serve(middleware_for("async"), request, anonymous_cookie())

    assert exchange.identity.user_id == "3"
    assert our_records(identity_log, logging.WARNING) == []


class UserOnly:
    """A request from an auth middleware that sets request.user only (or Django < 5)."""

    def __init__(self, user: object) -> None:
        self.user = user


def test_async_mode_without_auser_reads_request_user_in_a_thread() -> None:
    class LazyUser:
        """Records the thread it is evaluated in, as a SimpleLazyObject would query in."""

        pk = 8
        threads: ClassVar[list[int]] = []

        @property
        def is_authenticated(self) -> bool:
            self.threads.append(threading.get_ident())
            return True

    exchange = serve(middleware_for("async"), UserOnly(LazyUser()), anonymous_cookie())

    assert exchange.identity.user_id == "8"
    assert LazyUser.threads
    assert threading.get_ident() not in LazyUser.threads  # the event loop's thread


def test_middleware_mode_follows_get_response(mode: str) -> None:
    from asgiref.sync import iscoroutinefunction

    middleware = middleware_for(mode)

    assert (IdentityMiddleware.sync_capable, IdentityMiddleware.async_capable) == (True, True)
    assert iscoroutinefunction(middleware) is (mode == "async")


def test_without_request_user_the_middleware_order_is_named_once(
    identity_log: pytest.LogCaptureFixture, mode: str
) -> None:
    middleware = middleware_for(mode)

    for _ in range(2):
        exchange = serve(middleware, object(), signed_in_cookie("7"))
        # Nothing reported: the cookie's user stands.
        assert exchange.resolution.transition is Transition.NONE

    [error] = our_records(identity_log, logging.ERROR)
    assert "after 'django.contrib.auth.middleware.AuthenticationMiddleware'" in error.getMessage()


def test_a_failing_user_lookup_reports_nothing_and_is_logged_once(
    identity_log: pytest.LogCaptureFixture, mode: str
) -> None:
    middleware = middleware_for(mode)

    for _ in range(2):
        exchange = serve(middleware, Request(BrokenUser()), signed_in_cookie("7"))
        assert exchange.resolution.transition is Transition.NONE

    [warning] = our_records(identity_log, logging.WARNING)
    assert "ConnectionError" in warning.getMessage()


def test_a_failing_user_lookup_after_the_view_never_fails_the_request(
    identity_log: pytest.LogCaptureFixture, mode: str
) -> None:
    def break_user(request: Request) -> None:
        request.user = BrokenUser()

    serve(middleware_for(mode, break_user), Request(User(7)), signed_in_cookie("7"))

    [warning] = our_records(identity_log, logging.WARNING)
    assert "ConnectionError" in warning.getMessage()


def test_an_authenticated_user_without_a_pk_reports_nothing(mode: str) -> None:
    exchange = serve(middleware_for(mode), Request(User(None)), signed_in_cookie("7"))

    assert exchange.resolution.transition is Transition.NONE
    assert exchange.identity.signed_in


# The wrappers read the user again when the response starts; the user Django
# reported must be the one the response goes out with.


def wsgi_app(request: Request) -> Any:
    middleware = middleware_for("sync", log_in)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        middleware(request)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return app


def asgi_app(request: Request) -> Any:
    middleware = middleware_for("async", log_in)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await middleware(request)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


@pytest.mark.parametrize("adapter", ["wsgi", "asgi"])
def test_the_response_goes_out_with_the_user_django_reported(adapter: str) -> None:
    from posthog_identity.asgi import IdentityMiddleware as ASGIMiddleware
    from posthog_identity.wsgi import IdentityMiddleware as WSGIMiddleware

    settings = Settings(secrets=(SECRET,))
    headers = {"Cookie": anonymous_cookie()}
    if adapter == "wsgi":
        app = WSGIMiddleware(wsgi_app(Request(ANONYMOUS)), settings)
        reply = call_wsgi(app, "GET", "/", headers)
    else:
        app = ASGIMiddleware(asgi_app(Request(ANONYMOUS)), settings)
        reply = call_asgi(app, "GET", "/", headers)

    [cookie] = reply.identity_cookies
    state = read_cookie(cookie)
    assert (state.anonymous_id, state.user_hash, state.linked) == (
        ANONYMOUS_ID,
        CODEC.user_hash("99"),
        True,
    )


@pytest.mark.parametrize("adapter", ["wsgi", "asgi"])
@pytest.mark.parametrize(
    "options",
    [pytest.param({"disabled": True}, id="kill-switch"), {"exclude_paths": ("/",)}],
    ids=["kill-switch", "excluded-path"],
)
def test_requests_the_wrapper_passes_through_on_purpose_log_nothing(
    django_project: None,
    identity_log: pytest.LogCaptureFixture,
    adapter: str,
    options: dict[str, Any],
) -> None:
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.wsgi import WSGIHandler

    from posthog_identity.asgi import IdentityMiddleware as ASGIMiddleware
    from posthog_identity.wsgi import IdentityMiddleware as WSGIMiddleware

    settings = Settings(secrets=(SECRET,), **options)
    if adapter == "wsgi":
        app: Any = WSGIMiddleware(WSGIHandler(), settings)
        replies = [call_wsgi(app, "GET", "/", {"Host": "testserver"}) for _ in range(2)]
        statuses = [reply.status for reply in replies]
    else:
        app = ASGIMiddleware(ASGIHandler(), settings)
        statuses = [asyncio.run(django_asgi_status(app)) for _ in range(2)]

    assert statuses == [200, 200]
    assert our_records(identity_log, logging.ERROR) == []


async def django_asgi_status(app: Any) -> int:
    """One GET / through Django's ASGI handler, which listens for a disconnect after the body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
    }
    requests = [{"type": "http.request", "body": b"", "more_body": False}]
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await asyncio.Event().wait()  # no disconnect: Django cancels this when done
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


# posthog's own Django middleware, placed inside ours, trusts X-POSTHOG-DISTINCT-ID:
# ours replaces the header with the verified distinct id before Django sees it.

_capturing: list[Any] = []  # the client the capturing view sends with


def capture_view(request: HttpRequest) -> HttpResponse:
    _capturing[0].capture("Viewed")
    return HttpResponse("ok")


urlpatterns.append(path("capture", capture_view))


def test_posthogs_own_django_middleware_inside_ours_keeps_the_cookies_identity(
    django_project: None, sink: Sink, client: Any
) -> None:
    from django.core.handlers.wsgi import WSGIHandler
    from django.test.utils import override_settings

    from posthog_identity.wsgi import IdentityMiddleware as WSGIMiddleware

    _capturing[:] = [client]
    inside = [*MIDDLEWARE, "posthog.integrations.django.PosthogContextMiddleware"]
    with override_settings(MIDDLEWARE=inside):
        app = WSGIMiddleware(WSGIHandler(), Settings(secrets=(SECRET,)), client=client)
        headers = {
            "Host": "testserver",
            "Cookie": anonymous_cookie(),
            "X-POSTHOG-DISTINCT-ID": "someone-else",
        }
        assert call_wsgi(app, "GET", "/capture", headers).status == 200

    [event] = sink.wait_for(event="Viewed", count=1)
    assert event["distinct_id"] == ANONYMOUS_ID
