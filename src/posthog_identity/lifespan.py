"""ASGI lifespan for the middleware: the app's own, or ours when the app refuses it.

Queued events must be flushed before the server exits. uvicorn re-raises
SIGTERM after its graceful shutdown, so exit hooks never run there: lifespan
shutdown is the only moment left. Some apps refuse lifespan (Django's ASGI
handler raises on any scope but http); the middleware then answers it itself.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["serve_lifespan"]

logger = logging.getLogger("posthog_identity")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

_SHUTDOWN_ENDS = frozenset({"lifespan.shutdown.complete", "lifespan.shutdown.failed"})


async def serve_lifespan(
    app: ASGIApp,
    scope: MutableMapping[str, Any],
    receive: Receive,
    send: Send,
    *,
    on_shutdown: Callable[[], Awaitable[None]],
) -> None:
    """Run `app`'s lifespan, awaiting `on_shutdown` before shutdown completes.

    An app that raises or returns before reading its first lifespan message
    refused lifespan (the ASGI spec's way to say "unsupported"): we answer
    startup and shutdown ourselves. One that raises after reading it failed
    for real: the error goes to the server, which decides.
    """
    received = False
    flushed = False

    async def flush_once() -> None:
        nonlocal flushed
        if not flushed:
            flushed = True
            await on_shutdown()

    async def app_receive() -> Message:
        nonlocal received
        received = True
        return await receive()

    async def app_send(message: Message) -> None:
        if message["type"] in _SHUTDOWN_ENDS:
            await flush_once()
        await send(message)

    try:
        await app(scope, app_receive, app_send)
    except Exception as error:
        if received:
            raise
        logger.debug(
            "posthog_identity: the app refused lifespan (%s); the middleware answers it",
            type(error).__name__,
        )
    else:
        if received:
            return
    await _answer(receive, send, flush_once)


async def _answer(receive: Receive, send: Send, on_shutdown: Callable[[], Awaitable[None]]) -> None:
    """Lifespan for an app without one: startup completes, shutdown flushes first."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await on_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
