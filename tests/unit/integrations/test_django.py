"""Django glue: `posthog_identity.integrations.django.IdentityMiddleware`, in-process.

Django is configured lazily, in a fixture, only when nothing else has (and then
with apps any Django test would also accept); what the tests change per test
goes through `override_settings`. The middleware is driven directly, inside a
wrapper's request context, or behind Django's own handlers. The example project
under real servers is in `tests/servers/test_django_example.py`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import django
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
from tests.helpers.project import SECRET
from tests.helpers.wire import COOKIE, read_cookie

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

    def save(self, **options: object) -> None:
        """Django's own user_logged_in receiver saves last_login; nothing to save here."""


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
    def save(self, **options: object) -> None:
        pass

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


# Django's login()/logout() send user_logged_in/user_logged_out: a capture right
# after them in the same view already carries the new state.


def what_a_capture_carries() -> tuple[str | None, object]:
    """The distinct id and person-processing tag posthog puts on a capture made now."""
    from posthog.contexts import get_context_distinct_id, get_tags

    return get_context_distinct_id(), get_tags().get("$process_person_profile")


def send_login(request: Request, user: object) -> None:
    """What django.contrib.auth.login() does: the new user on the request, then the signal."""
    from django.contrib.auth.signals import user_logged_in

    request.user = user
    user_logged_in.send(sender=type(user), request=request, user=user)


def send_logout(request: Request) -> None:
    """What django.contrib.auth.logout() does: the signal, then an anonymous user."""
    from django.contrib.auth.signals import user_logged_out

    user_logged_out.send(sender=type(request.user), request=request, user=request.user)
    request.user = ANONYMOUS


def test_a_capture_right_after_login_in_the_view_carries_the_user_with_a_person(
    mode: str,
) -> None:
    seen: list[object] = []

    def view(request: Request) -> None:
        seen.append(what_a_capture_carries())
        send_login(request, User(99))
        seen.append(what_a_capture_carries())

    exchange = serve(middleware_for(mode, view), Request(ANONYMOUS), anonymous_cookie())

    assert seen == [(ANONYMOUS_ID, False), ("99", True)]
    assert exchange.resolution.link == Link("99", ANONYMOUS_ID)


def test_a_capture_right_after_logout_in_the_view_is_not_the_users(mode: str) -> None:
    seen: list[object] = []

    def view(request: Request) -> None:
        send_logout(request)
        seen.append(what_a_capture_carries())

    exchange = serve(middleware_for(mode, view), Request(User(7)), signed_in_cookie("7"))

    [(distinct, personless)] = seen
    assert exchange.resolution.transition is Transition.LOGOUT
    assert distinct == exchange.identity.distinct_id != ANONYMOUS_ID
    assert personless is False


def test_alogin_in_an_async_view_is_heard_through_the_async_signal() -> None:
    from django.contrib.auth.signals import user_logged_in

    seen: list[object] = []
    user = User(42)

    async def view(request: Request) -> str:
        request.user = user
        await user_logged_in.asend(sender=User, request=request, user=user)  # alogin()
        seen.append(what_a_capture_carries())
        return RESPONSE

    serve(IdentityMiddleware(view), Request(ANONYMOUS), anonymous_cookie())

    assert seen == [("42", True)]


def test_login_signals_outside_a_wrapped_request_are_ignored(mode: str) -> None:
    middleware_for(mode)  # connects the receivers
    request = Request(ANONYMOUS)

    send_login(request, User(3))
    send_logout(request)

    assert current_identity() is None


def test_a_user_that_fails_in_the_login_signal_never_breaks_login_and_is_logged_once(
    mode: str, identity_log: pytest.LogCaptureFixture
) -> None:
    seen: list[object] = []

    def view(request: Request) -> None:
        send_login(request, BrokenUser())
        seen.append(what_a_capture_carries())

    for _ in range(2):
        serve(middleware_for(mode, view), Request(ANONYMOUS), anonymous_cookie())

    assert seen == [(ANONYMOUS_ID, False)] * 2
    warnings = [r.getMessage() for r in our_records(identity_log, logging.WARNING)]
    [signal] = [w for w in warnings if "signal" in w]
    assert "ConnectionError" in signal


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


async def django_asgi_status(
    app: Any, path: str = "/", headers: tuple[tuple[bytes, bytes], ...] = ()
) -> int:
    """One GET through Django's ASGI handler, which listens for a disconnect after the body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "method": "GET",
        "scheme": "http",
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
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


@pytest.mark.parametrize("protocol", ["wsgi", "asgi"])
def test_a_views_capture_carries_the_request_properties(
    django_project: None, sink: Sink, client: Any, protocol: str
) -> None:
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.wsgi import WSGIHandler

    from posthog_identity.asgi import IdentityMiddleware as ASGIMiddleware
    from posthog_identity.wsgi import IdentityMiddleware as WSGIMiddleware

    _capturing[:] = [client]
    headers = {"Host": "testserver", "Cookie": anonymous_cookie(), "User-Agent": "Agent/1"}
    settings = Settings(secrets=(SECRET,))
    if protocol == "wsgi":
        wsgi_app = WSGIMiddleware(WSGIHandler(), settings, client=client)
        assert call_wsgi(wsgi_app, "GET", "/capture", headers).status == 200
    else:
        asgi_app = ASGIMiddleware(ASGIHandler(), settings, client=client)
        sent = tuple((k.lower().encode(), v.encode()) for k, v in headers.items() if k != "Host")
        assert asyncio.run(django_asgi_status(asgi_app, "/capture", sent)) == 200

    [event] = sink.wait_for(event="Viewed", count=1)
    properties = event["properties"]
    assert properties["$current_url"] == "http://testserver/capture"
    assert properties["$request_method"] == "GET"
    assert properties["$request_path"] == "/capture"
    assert properties["$user_agent"] == "Agent/1"
    assert properties["$ip"] == "127.0.0.1"


# An unhandled error in a view: Django answers its 500 before any WSGI middleware
# sees the error, and its got_request_exception signal sends it to error tracking.


def boom_view(request: HttpRequest) -> HttpResponse:
    raise LookupError("the order is gone")


urlpatterns.append(path("boom", boom_view))


def test_an_unhandled_error_in_a_view_is_one_exception_event_while_django_answers_500(
    django_project: None, sink: Sink, client: Any
) -> None:
    from django.core.handlers.wsgi import WSGIHandler

    from posthog_identity.wsgi import IdentityMiddleware as WSGIMiddleware

    app = WSGIMiddleware(WSGIHandler(), Settings(secrets=(SECRET,)), client=client)
    headers = {"Host": "testserver", "Cookie": anonymous_cookie()}

    assert call_wsgi(app, "GET", "/boom", headers).status == 500

    client.capture("Marker", distinct_id="marker")
    sink.wait_for(event="Marker")
    names = [e["event"] for e in sink.events()]
    assert names[: names.index("Marker")] == ["$exception"]
    [event] = sink.events("$exception")
    assert event["distinct_id"] == ANONYMOUS_ID
    assert event["properties"]["$exception_source"] == "django.got_request_exception"
    assert event["properties"]["$exception_list"][0]["type"] == "LookupError"
