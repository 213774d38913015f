"""Unhandled errors of a request, sent to PostHog error tracking once, as the request.

The adapters call `capture_unhandled` where an error leaves the app; the
framework integrations call it where Django or Flask turn the error into a 500
before any WSGI/ASGI middleware sees it. It runs inside the request's posthog
context, so the `$exception` event carries the request's distinct id, session
and request properties like any server capture.
"""

from __future__ import annotations

from typing import Any, cast

from .context import current_exchange
from .logs import logger

__all__ = ["capture_unhandled"]


def capture_unhandled(error: BaseException | None, source: str) -> None:
    """Send `error`, which the app did not handle in the current request, to error tracking.

    At most one event per exception: posthog's client marks an exception it
    captured and skips it afterwards, so our hooks and posthog's own
    middlewares (inside or around ours) never send it twice. Nothing outside a
    request, without a client, with POSTHOG_IDENTITY_CAPTURE_EXCEPTIONS off or
    without the visitor's consent. `source` names where it was caught
    (`$exception_source`). Never raises: the app's error is what propagates.
    """
    if not isinstance(error, Exception):
        return  # cancellation, exit: not the app's errors
    exchange = current_exchange()
    if exchange is None:
        return
    engine = exchange.engine
    client = engine.client
    if client is None or not engine.settings.capture_exceptions:
        return
    try:
        if not exchange.consent.granted:
            return
        # posthog's own middlewares describe an error they catch this way:
        # unhandled, level error. Clients before this keyword ignore it.
        capture = cast(Any, client.capture_exception)
        capture(error, _capture_metadata=_metadata(source))
    except Exception:
        logger.exception("posthog_identity: capturing an unhandled error failed")


def _metadata(source: str) -> dict[str, Any]:
    return {
        "level": "error",
        "source": source,
        "mechanism": {"type": "middleware", "handled": False},
    }
