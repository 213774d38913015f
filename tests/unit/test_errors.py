"""Unhandled errors reach PostHog error tracking: one `$exception` per error, as the request.

Plain WSGI and ASGI apps that raise, driven in-process through the real
middleware, with posthog's real client posting to a `Sink`. "No second event"
and "no event" are shown by a marker captured after the request: the client
sends in order, so once the marker has arrived everything before it has too.
Django, Flask and plain apps under real servers are in `tests/servers/test_errors.py`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import flask
import posthog
import pytest
from fastapi import FastAPI
from posthog.integrations.asgi import PosthogASGIMiddleware

from posthog_identity.asgi import IdentityMiddleware as ASGIMiddleware
from posthog_identity.errors import capture_unhandled
from posthog_identity.integrations.fastapi import install
from posthog_identity.integrations.flask import init_app
from posthog_identity.settings import Settings
from posthog_identity.signing import CookieCodec, CookieState
from posthog_identity.testing import Sink
from posthog_identity.wsgi import IdentityMiddleware as WSGIMiddleware
from tests.helpers.drivers import call_asgi, call_wsgi
from tests.helpers.wire import COOKIE, PERSONLESS, distinct_id

EXCEPTION = "$exception"
MARKER = "Marker After The Request"
SESSION = "0190a4b2-7c3e-7d41-8b2a-5f6e7d8c9b0a"
AGENT = "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0"


class Boom(Exception):
    """The app's own error."""


def wsgi_app(when: str) -> Any:
    """A WSGI app that raises before its response, or while streaming its body."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if when == "before":
            raise Boom("the database is down")
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> Iterator[bytes]:
            yield b"first part, "
            raise Boom("the database went down mid-stream")

        return body()

    return app


def asgi_app(when: str) -> Any:
    """An ASGI app that raises before its response, or after starting it."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if when == "during":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
        raise Boom("the database is down")

    return app


def app_for(adapter: str, when: str = "before") -> Any:
    return wsgi_app(when) if adapter == "wsgi" else asgi_app(when)


def wrap(adapter: str, app: Any, settings: Settings, client: posthog.Client) -> Any:
    if adapter == "wsgi":
        return WSGIMiddleware(app, settings, client=client)
    return ASGIMiddleware(app, settings, client=client)


def signed_cookie(settings: Settings, anonymous_id: str) -> str:
    state = CookieState(anonymous_id, None, False, int(time.time()))
    return f"{COOKIE}={CookieCodec(settings.secrets).dumps(state)}"


def call(adapter: str, app: Any, headers: dict[str, str] | None = None) -> Boom:
    """One request to the wrapped `app`; returns the app's own error, which must come out."""
    send = call_wsgi if adapter == "wsgi" else call_asgi
    with pytest.raises(Boom) as raised:
        send(app, "GET", "/orders/7?token=secret", headers or {})
    return raised.value


def exceptions_sent(sink: Sink, client: posthog.Client) -> list[dict[str, Any]]:
    """The `$exception` events that arrived before a marker captured now."""
    client.capture(MARKER, distinct_id="marker")
    sink.wait_for(event=MARKER)
    events = sink.events()
    before = events[: [e["event"] for e in events].index(MARKER)]
    return [e for e in before if e["event"] == EXCEPTION]


SHAPES = [("wsgi", "before"), ("wsgi", "during"), ("asgi", "before"), ("asgi", "during")]
SHAPE_IDS = ["wsgi-before-response", "wsgi-streaming", "asgi-before-response", "asgi-mid-body"]


@pytest.mark.parametrize(("adapter", "when"), SHAPES, ids=SHAPE_IDS)
def test_an_unhandled_error_is_one_exception_event_as_the_request(
    adapter: str, when: str, sink: Sink, settings: Settings, client: posthog.Client
) -> None:
    anonymous_id = str(uuid.uuid4())
    headers = {
        "Cookie": signed_cookie(settings, anonymous_id),
        "X-POSTHOG-SESSION-ID": SESSION,
        "User-Agent": AGENT,
        "Host": "shop.example",
    }

    call(adapter, wrap(adapter, app_for(adapter, when), settings, client), headers)

    [event] = exceptions_sent(sink, client)
    properties = event["properties"]
    assert distinct_id(event) == anonymous_id
    assert properties["$session_id"] == SESSION
    assert properties["$current_url"] == "http://shop.example/orders/7"
    assert properties["$request_method"] == "GET"
    assert properties["$request_path"] == "/orders/7"
    assert properties["$user_agent"] == AGENT
    assert properties["$ip"] == "127.0.0.1"
    assert properties[PERSONLESS] is False  # anonymous: personless, as its other captures
    [error] = properties["$exception_list"]
    assert error["type"] == "Boom"
    assert error["mechanism"]["handled"] is False


@pytest.mark.parametrize("adapter", ["wsgi", "asgi"])
def test_the_apps_error_propagates_unchanged(
    adapter: str, settings: Settings, client: posthog.Client
) -> None:
    raised: list[Boom] = []

    def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
        raised.append(Boom("mine"))
        raise raised[-1]

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raised.append(Boom("mine"))
        raise raised[-1]

    app = wsgi if adapter == "wsgi" else asgi

    assert call(adapter, wrap(adapter, app, settings, client)) is raised[0]


@pytest.mark.parametrize("adapter", ["wsgi", "asgi"])
def test_capture_exceptions_off_sends_nothing(
    adapter: str, sink: Sink, settings: Settings, client: posthog.Client
) -> None:
    off = replace(settings, capture_exceptions=False)

    call(adapter, wrap(adapter, app_for(adapter), off, client))

    assert exceptions_sent(sink, client) == []


@pytest.mark.parametrize("adapter", ["wsgi", "asgi"])
def test_nothing_is_sent_without_consent(
    adapter: str, sink: Sink, settings: Settings, client: posthog.Client
) -> None:
    opt_in = replace(settings, consent="opt-in")  # and no consent cookie: not granted

    call(adapter, wrap(adapter, app_for(adapter), opt_in, client))

    assert exceptions_sent(sink, client) == []


@pytest.mark.parametrize("adapter", ["wsgi", "asgi"])
def test_with_consent_the_error_is_sent(
    adapter: str, sink: Sink, settings: Settings, client: posthog.Client
) -> None:
    opt_in = replace(settings, consent="opt-in")

    call(adapter, wrap(adapter, app_for(adapter), opt_in, client), {"Cookie": "ph_consent=yes"})

    assert len(exceptions_sent(sink, client)) == 1


@pytest.mark.parametrize("inside", [True, False], ids=["inside-ours", "around-ours"])
def test_posthogs_own_asgi_middleware_beside_ours_still_makes_one_event(
    inside: bool, sink: Sink, settings: Settings, client: posthog.Client
) -> None:
    app: Any = asgi_app("before")
    if inside:
        app = ASGIMiddleware(
            PosthogASGIMiddleware(app, client=client, capture_exceptions=True),
            settings,
            client=client,
        )
    else:
        app = PosthogASGIMiddleware(
            ASGIMiddleware(app, settings, client=client), client=client, capture_exceptions=True
        )

    call("asgi", app)

    assert len(exceptions_sent(sink, client)) == 1


def test_an_error_outside_a_request_is_not_sent(sink: Sink, client: posthog.Client) -> None:
    capture_unhandled(Boom("in a script"), "test")

    assert exceptions_sent(sink, client) == []


class FailingCapture(posthog.Client):
    """A client whose capture_exception itself fails."""

    def capture_exception(self, exception: Any, **kwargs: Any) -> str | None:
        raise RuntimeError("posthog is broken")


@pytest.mark.parametrize("adapter", ["wsgi", "asgi"])
def test_a_failing_capture_is_logged_and_the_apps_error_still_propagates(
    adapter: str, sink: Sink, settings: Settings, caplog_identity: pytest.LogCaptureFixture
) -> None:
    broken = FailingCapture("phc_test", host=sink.url, sync_mode=True)

    call(adapter, wrap(adapter, app_for(adapter), settings, broken))

    [record] = [r for r in caplog_identity.records if r.levelno == logging.ERROR]
    assert "capturing an unhandled error failed" in record.getMessage()


@pytest.mark.parametrize("adapter", ["wsgi", "asgi"])
def test_an_exit_is_not_an_error_of_the_app(
    adapter: str, sink: Sink, settings: Settings, client: posthog.Client
) -> None:
    def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
        raise SystemExit(3)

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise SystemExit(3)

    app = wrap(adapter, wsgi if adapter == "wsgi" else asgi, settings, client)
    with pytest.raises(SystemExit):
        (call_wsgi if adapter == "wsgi" else call_asgi)(app, "GET", "/", {})

    assert exceptions_sent(sink, client) == []


def test_flask_answers_its_500_and_the_error_is_sent_once(
    sink: Sink, settings: Settings, client: posthog.Client
) -> None:
    app = flask.Flask(__name__)

    @app.get("/boom")
    def boom() -> str:
        raise Boom("the database is down")

    init_app(app, settings=settings, client=client)

    reply = call_wsgi(app, "GET", "/boom", {"User-Agent": AGENT})

    assert reply.status == 500
    [event] = exceptions_sent(sink, client)
    assert event["properties"]["$exception_list"][0]["type"] == "Boom"
    assert event["properties"]["$exception_source"] == "flask.got_request_exception"


def test_fastapi_answers_its_500_and_the_error_is_sent_once(
    sink: Sink, settings: Settings, client: posthog.Client
) -> None:
    app = FastAPI()

    @app.get("/orders/{number}")
    def order(number: int) -> str:
        raise Boom("the database is down")

    install(app, settings=settings, client=client)
    answered: list[int] = []

    async def server(scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def sent(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answered.append(message["status"])
            await send(message)

        await app(scope, receive, sent)

    call("asgi", server)  # Starlette re-raises after answering, for the server to log

    assert answered == [500]
    [event] = exceptions_sent(sink, client)
    assert event["properties"]["$exception_source"] == "asgi.middleware"


@pytest.mark.parametrize("adapter", ["wsgi", "asgi"])
def test_a_signed_in_users_error_carries_the_user_id_with_person_processing(
    adapter: str, sink: Sink, settings: Settings, client: posthog.Client
) -> None:
    app = app_for(adapter)
    if adapter == "wsgi":
        wrapped = WSGIMiddleware(app, settings, client=client, user_id=lambda environ: "user-42")
    else:
        wrapped = ASGIMiddleware(app, settings, client=client, user_id=lambda scope: "user-42")

    call(adapter, wrapped)

    [event] = exceptions_sent(sink, client)
    assert distinct_id(event) == "user-42"
    assert PERSONLESS not in event["properties"]
