"""ASGI lifespan through the middleware: the app's own, or the middleware's when
the app refuses it, with queued events delivered before shutdown completes.

The apps here are raw ASGI callables shaped like the cases that matter:
Django's handler (raises on any scope but http, before reading a message), an
app that just returns, and one whose startup really fails. Events go through
a real posthog client that would hold them for a minute, to a real sink: only
the shutdown flush can deliver them in time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import posthog
import pytest

from posthog_identity.asgi import IdentityMiddleware
from posthog_identity.settings import Settings
from posthog_identity.testing import Sink
from tests.helpers.project import API_KEY

EVENT = "Queued Before Shutdown"
#: How long the server waits for each lifespan answer; generous, it comes at once.
ANSWER_TIMEOUT = 30.0


@pytest.fixture
def holding(sink: Sink) -> Iterator[posthog.Client]:
    """A client that sends nothing on its own for a minute."""
    client = posthog.Client(API_KEY, host=sink.url, flush_interval=60, flush_at=1000)
    yield client
    client.shutdown()


async def refuses_like_django(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")


async def returns_at_once(scope: dict[str, Any], receive: Any, send: Any) -> None:
    return None


async def startup_crashes(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    raise RuntimeError("the database is unreachable")


def run_lifespan(app: Any, sink: Sink, client: posthog.Client) -> list[tuple[str, int]]:
    """Startup, one capture, shutdown; returns each message the server got, with
    how many events the sink held when it arrived."""
    got: list[tuple[str, int]] = []

    async def main() -> None:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        answered = asyncio.Event()

        async def send(message: dict[str, Any]) -> None:
            got.append((message["type"], len(sink.events())))
            answered.set()

        task = asyncio.create_task(
            app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send)
        )
        await inbox.put({"type": "lifespan.startup"})
        # Bounded: a middleware that leaves lifespan unanswered must fail, not hang.
        waiter = asyncio.ensure_future(answered.wait())
        await asyncio.wait(
            {task, waiter}, timeout=ANSWER_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        if not answered.is_set():
            task.cancel()
            return
        client.capture(EVENT, distinct_id="someone")
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(task, timeout=ANSWER_TIMEOUT)

    asyncio.run(main())
    return got


@pytest.mark.parametrize("app", [refuses_like_django, returns_at_once], ids=["raises", "returns"])
def test_an_app_refusing_lifespan_gets_it_answered_and_events_flushed_before_shutdown_completes(
    app: Any, settings: Settings, sink: Sink, holding: posthog.Client
) -> None:
    middleware = IdentityMiddleware(app, settings, client=holding)

    got = run_lifespan(middleware, sink, holding)

    assert got == [("lifespan.startup.complete", 0), ("lifespan.shutdown.complete", 1)]
    assert [e["event"] for e in sink.events()] == [EVENT]


def test_an_app_whose_startup_fails_after_reading_it_raises_to_the_server(
    settings: Settings, holding: posthog.Client
) -> None:
    middleware = IdentityMiddleware(startup_crashes, settings, client=holding)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with pytest.raises(RuntimeError, match="database is unreachable"):
        asyncio.run(middleware({"type": "lifespan"}, receive, send))
    assert sent == []
