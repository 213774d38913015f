"""current_identity / identify_user / forget_user / grant_consent / revoke_consent, and
the posthog context binding."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import posthog
import pytest
from posthog.contexts import get_context_distinct_id

from posthog_identity import (
    current_identity,
    forget_user,
    grant_consent,
    identify_user,
    revoke_consent,
)
from posthog_identity.context import bind, enrich_events
from posthog_identity.engine import Engine
from posthog_identity.exchange import Exchange, RequestInfo

if TYPE_CHECKING:
    from posthog_identity.settings import Settings
    from posthog_identity.testing import Sink

REQUEST = RequestInfo(method="GET", scheme="http", path="/")


@pytest.mark.parametrize(
    "call", [lambda: identify_user("u"), forget_user], ids=["identify", "forget"]
)
def test_outside_a_request_the_calls_warn_and_do_nothing(
    caplog: pytest.LogCaptureFixture, call: object
) -> None:
    caplog.set_level(logging.WARNING, logger="posthog_identity")
    assert callable(call)
    call()
    assert current_identity() is None
    assert "outside a request" in caplog.text


def test_identify_user_moves_the_identity_and_the_posthog_context(settings: Settings) -> None:
    exchange = Exchange(Engine(settings), REQUEST)
    with bind(exchange):
        anonymous = current_identity()
        assert anonymous is not None
        assert get_context_distinct_id() == anonymous.distinct_id
        assert posthog.get_tags()["$process_person_profile"] is False
        identify_user(7)
        identity = current_identity()
        assert identity is not None
        assert identity.user_id == "7"
        assert identity.anonymous_id == anonymous.anonymous_id
        assert get_context_distinct_id() == "7"
        assert posthog.get_tags()["$process_person_profile"] is True
        forget_user()
        assert posthog.get_tags()["$process_person_profile"] is False
    assert current_identity() is None


def test_an_invalid_id_is_ignored(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="posthog_identity")
    exchange = Exchange(Engine(settings), REQUEST)
    with bind(exchange):
        identify_user(["not", "an", "id"])
        identity = current_identity()
        assert identity is not None
        assert not identity.is_identified
    assert "ignoring a user id" in caplog.text


def test_identify_user_works_from_a_thread_that_copied_the_context(settings: Settings) -> None:
    exchange = Exchange(Engine(settings), REQUEST)
    with bind(exchange), ThreadPoolExecutor(1) as pool:
        context = contextvars.copy_context()
        pool.submit(context.run, identify_user, "threaded").result()
        identity = current_identity()
        assert identity is not None
        assert identity.user_id == "threaded"
        assert get_context_distinct_id() == "threaded"


def test_asyncio_to_thread_sees_and_changes_the_request(settings: Settings) -> None:
    exchange = Exchange(Engine(settings), REQUEST)

    async def view() -> str | None:
        await asyncio.to_thread(identify_user, "from-thread")
        identity = current_identity()
        return None if identity is None else identity.user_id

    with bind(exchange):
        assert asyncio.run(view()) == "from-thread"


def test_concurrent_requests_never_see_each_others_identity(settings: Settings) -> None:
    engine = Engine(settings)

    async def request(n: int) -> tuple[str, str | None]:
        exchange = Exchange(engine, REQUEST)
        with bind(exchange):
            identify_user(f"user-{n}")
            await asyncio.sleep(0)
            identity = current_identity()
            return f"user-{n}", None if identity is None else identity.user_id

    async def main() -> list[tuple[str, str | None]]:
        return await asyncio.gather(*(request(n) for n in range(200)))

    results = asyncio.run(main())
    assert all(expected == seen for expected, seen in results)


def test_report_user_is_reread_at_response_start_unlike_identify_user(settings: Settings) -> None:
    from posthog_identity.context import has_request, report_user

    assert not has_request()
    report_user("ignored outside a request")
    exchange = Exchange(Engine(settings), REQUEST)
    with bind(exchange):
        assert has_request()
        report_user(5)
        assert not exchange.explicit
        identity = current_identity()
        assert identity is not None
        assert identity.user_id == "5"
        identify_user("chosen")
        report_user(None)
        identity = current_identity()
        assert identity is not None
        assert identity.user_id == "chosen", "the app's own call wins"


def test_a_callback_may_say_it_cannot_tell(settings: Settings) -> None:
    from posthog_identity import NOTHING

    engine = Engine(settings)
    assert engine.coerce(NOTHING) is NOTHING


@pytest.mark.parametrize("call", [grant_consent, revoke_consent], ids=["grant", "revoke"])
def test_outside_a_request_they_warn(
    call: Callable[[], None], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="posthog_identity")
    call()
    assert "outside a request" in caplog.text


# -- the request's properties: added when an event is captured, not per request ---

SHOP = RequestInfo(method="GET", scheme="http", path="/", host="shop.example", user_agent="UA")


def enriching(settings: Settings, client: posthog.Client) -> Engine:
    """An engine whose client adds the request's properties, as a middleware sets it up."""
    engine = Engine(settings, client)
    enrich_events(engine.client)
    return engine


def test_a_request_that_captures_nothing_puts_no_request_properties_on_the_context(
    settings: Settings, client: posthog.Client
) -> None:
    with bind(Exchange(enriching(settings, client), SHOP)):
        tags = posthog.get_tags()
    assert not {"$current_url", "$request_method", "$request_path", "$user_agent"} & set(tags)


def test_a_client_whose_before_send_the_app_replaced_gets_the_properties_as_tags(
    settings: Settings, client: posthog.Client
) -> None:
    engine = enriching(settings, client)
    client.before_send = lambda event: event
    with bind(Exchange(engine, SHOP)):
        tags = posthog.get_tags()
    assert (tags["$current_url"], tags["$request_method"]) == ("http://shop.example/", "GET")


def test_a_failure_adding_the_properties_loses_no_event(
    settings: Settings,
    client: posthog.Client,
    sink: Sink,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(self: Exchange) -> dict[str, str]:
        raise RuntimeError("broken")

    monkeypatch.setattr(Exchange, "request_properties", broken)
    with bind(Exchange(enriching(settings, client), SHOP)):
        client.capture("Still Sent")
    [event] = sink.wait_for(event="Still Sent", count=1)
    assert "$request_method" not in event["properties"]
    assert "adding the request's properties failed" in caplog.text


def test_the_request_properties_are_built_once_however_many_events(
    settings: Settings, client: posthog.Client, sink: Sink
) -> None:
    exchange = Exchange(enriching(settings, client), SHOP)
    with bind(exchange):
        client.capture("First")
        built = exchange.request_properties()
        client.capture("Second")
        assert exchange.request_properties() is built
    events = sink.wait_for(count=2)
    assert [e["properties"]["$request_path"] for e in events] == ["/", "/"]
