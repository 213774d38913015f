"""Failure policy: analytics never breaks the app; our own errors are logged."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import posthog
import pytest

from posthog_identity import asgi_send, wsgi_body
from posthog_identity.asgi import IdentityMiddleware as ASGIMiddleware
from posthog_identity.cookies import CookieWriter
from posthog_identity.exchange import Exchange
from posthog_identity.wsgi import IdentityMiddleware as WSGIMiddleware
from tests.helpers.drivers import Driver, call_asgi, call_wsgi, driver_for, make_site

if TYPE_CHECKING:
    from posthog_identity.settings import Settings


def test_a_failing_link_is_logged_and_the_login_still_answers(
    adapter: str, settings: Settings, broken: posthog.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="posthog_identity")
    site = driver_for(adapter, make_site(adapter, settings, broken))
    site.get("/")
    reply = site.get("/login?user=kim")
    assert reply.status == 302
    assert len(reply.identity_cookies) == 1
    assert site.state.linked
    assert "sending the login link failed" in caplog.text


def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
    """A plain WSGI app answering 200 "fine"."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"fine"]


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    """The same app in ASGI."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"fine"})


@pytest.fixture
def failing_begin(monkeypatch: pytest.MonkeyPatch) -> None:
    def begin(self: Exchange, *args: Any) -> None:
        raise MemoryError("cannot allocate")

    monkeypatch.setattr(Exchange, "__init__", begin)


@pytest.mark.usefixtures("failing_begin")
def test_if_the_middleware_cannot_start_the_request_passes_through(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="posthog_identity")

    for reply in (
        call_wsgi(WSGIMiddleware(wsgi_app, settings), "GET", "/", {}),
        call_asgi(ASGIMiddleware(asgi_app, settings), "GET", "/", {}),
    ):
        assert (reply.status, reply.body) == (200, b"fine")
        assert reply.headers_named("Set-Cookie") == []
    assert caplog.text.count("could not start") == 2


def test_if_finishing_fails_the_response_is_sent_untouched(
    site: Driver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="posthog_identity")

    def explode(self: CookieWriter, value: str, *, secure: bool) -> str:
        raise UnicodeError("cannot encode")

    monkeypatch.setattr(CookieWriter, "identity", explode)
    reply = site.get("/")
    assert reply.status == 200
    assert reply.body == b"home"
    assert reply.headers_named("Set-Cookie") == []
    assert "finishing the response failed" in caplog.text


def test_if_settling_the_user_at_response_start_fails_the_response_still_goes_out(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="posthog_identity")

    def explode(exchange: Exchange, report: object) -> None:
        raise RuntimeError("cannot settle")

    monkeypatch.setattr(asgi_send, "settle", explode)
    monkeypatch.setattr(wsgi_body, "settle", explode)

    for reply in (
        call_wsgi(WSGIMiddleware(wsgi_app, settings, user_id=lambda _: "kim"), "GET", "/", {}),
        call_asgi(ASGIMiddleware(asgi_app, settings, user_id=lambda _: "kim"), "GET", "/", {}),
    ):
        assert (reply.status, reply.body) == (200, b"fine")
    assert caplog.text.count("re-reading the user failed") == 2
