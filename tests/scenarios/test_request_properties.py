"""The request's properties reach an event when it is captured, whichever client sends it:
the one the middleware builds, one the app passes in, posthog's module client the app
configured; through both adapters, posthog's real client and the sink."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any

import posthog
import pytest

from posthog_identity import Settings
from posthog_identity.signing import CookieCodec, CookieState
from posthog_identity.testing import Sink
from tests.helpers.drivers import ADAPTERS, Driver, driver_for
from tests.helpers.flags import app_configured_posthog
from tests.helpers.project import API_KEY, SECRET
from tests.sites import basic as apps

HEADERS = {"User-Agent": "Mozilla/5.0 (test)", "Host": "shop.example"}
EXPECTED = {
    "$current_url": "http://shop.example/",
    "$request_method": "GET",
    "$request_path": "/",
    "$user_agent": "Mozilla/5.0 (test)",
    "$ip": "127.0.0.1",
}


@dataclass
class Shape:
    """How the app gives the middleware its posthog client, and how its views capture."""

    name: str
    #: (the sink, the app's before_send or None) -> (client= for the middleware,
    #: what the views call capture on, the context the test runs in)
    prepare: Callable[[Sink, Any], tuple[Any, Any, AbstractContextManager[Any]]]


def _given(sink: Sink, hook: Any) -> tuple[Any, Any, AbstractContextManager[Any]]:
    client = posthog.Client(API_KEY, host=sink.url, flush_interval=0.05, before_send=hook)
    return client, client, _shut_down(client)


def _module(sink: Sink, hook: Any) -> tuple[Any, Any, AbstractContextManager[Any]]:
    return None, posthog, app_configured_posthog(sink.url, before_send=hook)


def _built(sink: Sink, hook: Any) -> tuple[Any, Any, AbstractContextManager[Any]]:
    # Only the settings carry the key: the middleware builds the client.
    return None, posthog, app_configured_posthog(None, before_send=hook)


class _shut_down(AbstractContextManager[Any]):
    def __init__(self, client: posthog.Client) -> None:
        self.client = client

    def __exit__(self, *exc: object) -> None:
        self.client.shutdown()


SHAPES = [
    pytest.param(Shape("given", _given), id="client-passed-in"),
    pytest.param(Shape("module", _module), id="module-configured-by-the-app"),
    pytest.param(Shape("built", _built), id="built-from-settings"),
]


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def wrap(adapter: str, settings: Settings, client: Any, captures_with: Any) -> Any:
    if adapter == "wsgi":
        from posthog_identity.wsgi import IdentityMiddleware as WSGI

        return WSGI(
            apps.make_wsgi_app(captures_with), settings, user_id=apps.wsgi_user, client=client
        )
    from posthog_identity.asgi import IdentityMiddleware as ASGI

    return ASGI(apps.make_asgi_app(captures_with), settings, user_id=apps.asgi_user, client=client)


@dataclass
class Site:
    driver: Driver
    app: Any
    captures_with: Any

    def visit(self, path: str = "/", headers: dict[str, str] | None = None) -> None:
        anonymous_id = str(uuid.uuid4())
        cookie = CookieCodec((SECRET,)).dumps(CookieState(anonymous_id, issued_at=2**31))
        reply = self.driver.get(path, cookie=f"ph_identity={cookie}", headers=headers or HEADERS)
        assert reply.status == 200

    def events(self, sink: Sink, name: str) -> list[dict[str, Any]]:
        self.app.engine.flush()
        return sink.wait_for(event=name, count=1)


@pytest.fixture
def open_site(adapter: str, settings: Settings, sink: Sink) -> Iterator[Callable[..., Site]]:
    """`open_site(shape, hook=None, settings=...)`: the basic site, its client of `shape`."""
    opened: list[AbstractContextManager[Any]] = []

    def open_(shape: Shape, hook: Any = None, config: Settings = settings) -> Site:
        client, captures_with, context = shape.prepare(sink, hook)
        context.__enter__()
        opened.append(context)
        if shape.name == "module":
            config = replace(config, api_key=None)
        app = wrap(adapter, config, client, captures_with)
        return Site(driver_for(adapter, app), app, captures_with)

    yield open_
    for context in reversed(opened):
        context.__exit__(None, None, None)


@pytest.mark.parametrize("shape", SHAPES)
def test_an_event_captured_in_a_view_carries_the_request_properties(
    open_site: Callable[..., Site], sink: Sink, shape: Shape
) -> None:
    site = open_site(shape)
    site.visit()
    [event] = site.events(sink, "Home Viewed")
    assert {k: event["properties"].get(k) for k in EXPECTED} == EXPECTED


@pytest.mark.parametrize("shape", SHAPES)
def test_an_event_captured_outside_a_request_carries_none(
    open_site: Callable[..., Site], sink: Sink, shape: Shape
) -> None:
    site = open_site(shape)
    site.visit()  # the process has served a request; this capture is not in one
    site.captures_with.capture("Nightly Job", distinct_id="job")
    [event] = site.events(sink, "Nightly Job")
    assert not set(EXPECTED) & set(event["properties"])


@pytest.mark.parametrize("shape", SHAPES)
def test_an_events_own_properties_win(
    open_site: Callable[..., Site], sink: Sink, shape: Shape
) -> None:
    site = open_site(shape)
    site.visit("/own-properties")
    [event] = site.events(sink, "Own Properties")
    assert event["properties"]["$current_url"] == "https://app.example/mine"
    assert event["properties"]["$request_path"] == "/own-properties"


@pytest.mark.parametrize("shape", SHAPES)
def test_without_consent_an_event_carries_none(
    open_site: Callable[..., Site], settings: Settings, sink: Sink, shape: Shape
) -> None:
    site = open_site(shape, config=replace(settings, consent="opt-in"))
    site.visit()
    [event] = site.events(sink, "Home Viewed")
    assert not set(EXPECTED) & set(event["properties"])


class CountingHook:
    """An app's own before_send: counts its calls, sees the event, marks it."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        self.seen.append(dict(event["properties"]))
        event["properties"]["app_hook"] = "ran"
        return event


@pytest.mark.parametrize("shape", SHAPES)
def test_the_apps_own_before_send_is_called_once_and_sees_the_properties(
    open_site: Callable[..., Site], sink: Sink, shape: Shape
) -> None:
    hook = CountingHook()
    site = open_site(shape, hook)
    site.visit()
    [event] = site.events(sink, "Home Viewed")
    assert event["properties"]["app_hook"] == "ran"
    assert len(hook.seen) == 1
    assert {k: hook.seen[0].get(k) for k in EXPECTED} == EXPECTED


def test_an_app_replacing_the_before_send_later_still_gets_the_properties_on_its_events(
    open_site: Callable[..., Site], sink: Sink
) -> None:
    site = open_site(Shape("given", _given))
    hook = CountingHook()
    site.captures_with.before_send = hook  # after the middleware started
    site.visit()
    [event] = site.events(sink, "Home Viewed")
    assert {k: event["properties"].get(k) for k in EXPECTED} == EXPECTED
    assert len(hook.seen) == 1


def test_a_module_before_send_set_later_still_gets_the_properties_on_its_events(
    open_site: Callable[..., Site], sink: Sink
) -> None:
    site = open_site(Shape("module", _module))
    hook = CountingHook()
    posthog.before_send = hook  # posthog.setup() hands it to the module client
    site.visit()
    [event] = site.events(sink, "Home Viewed")
    assert {k: event["properties"].get(k) for k in EXPECTED} == EXPECTED
    assert len(hook.seen) == 1


def test_two_middlewares_on_one_client_add_the_properties_once(
    adapter: str, settings: Settings, sink: Sink
) -> None:
    hook = CountingHook()
    client, captures_with, context = _given(sink, hook)
    with context:
        wrap(adapter, settings, client, captures_with)  # another app of the process
        app = wrap(adapter, settings, client, captures_with)
        Site(driver_for(adapter, app), app, captures_with).visit()
        [event] = Site(driver_for(adapter, app), app, captures_with).events(sink, "Home Viewed")
    assert {k: event["properties"].get(k) for k in EXPECTED} == EXPECTED
    assert len(hook.seen) == 1
