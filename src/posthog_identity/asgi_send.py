"""The ASGI response side: identity headers, and the HTML body rewrite, over `send`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .context import settle
from .identity import NOTHING, Absent
from .logs import logger
from .response import UNTOUCHED

if TYPE_CHECKING:
    from .asgi_scope import Message, Scope, Send
    from .exchange import Exchange
    from .identity import Report
    from .response import BodyRewrite, ResponsePlan

__all__ = ["Responder"]


class Responder:
    """Wraps `send` for one response: identity headers, then the HTML body rewrite.

    An HTML page's ``http.response.start`` is held only until the rewrite has
    decided, so its Content-Length can be corrected; other messages pass through.
    """

    __slots__ = ("exchange", "held", "reread", "rewrite", "scope", "send")

    def __init__(
        self,
        exchange: Exchange,
        send: Send,
        reread: Callable[[Scope], Report | Coroutine[Any, Any, Report]],
        scope: Scope,
    ) -> None:
        """`reread(scope)` asks the user source again when the response starts (a
        coroutine only when the source needs awaiting)."""
        self.exchange = exchange
        self.send = send
        self.reread = reread
        self.scope = scope
        self.rewrite: BodyRewrite | None = None
        self.held: Message | None = None

    def __call__(self, message: Message) -> Awaitable[None]:
        # Not a coroutine itself: a message passed through is the server's own
        # send, awaited once, with no coroutine of ours around it.
        if self.held is not None:
            return self._while_holding(message)
        if message["type"] == "http.response.start":
            return self._start(message)
        return self.send(message)

    def _start(self, message: Message) -> Awaitable[None]:
        """The response starts: settle the user, plan the response, send or hold the
        head. A coroutine of ours only when something must be awaited first (an
        async user callback, a remote flag evaluation); else the server's send."""
        exchange = self.exchange
        if not exchange.explicit:
            # An authentication middleware inside ours has run by now.
            report = self.reread(self.scope)
            if report is not NOTHING:  # reporting nothing changes nothing
                if not isinstance(report, (str, Absent)):  # a callback to await
                    return self._start_after(message, report)
                self._settle(report)
        return self._head(message)

    async def _start_after(self, message: Message, pending: Coroutine[Any, Any, Report]) -> None:
        report = await pending
        if report is not NOTHING:
            self._settle(report)
        await self._head(message)

    def _settle(self, report: Report) -> None:
        # Our failure here must not reach the app's `send`: the response goes on
        # with the identity the request started with.
        try:
            settle(self.exchange, report)
        except Exception:
            logger.exception("posthog_identity: re-reading the user failed")

    def _head(self, message: Message) -> Awaitable[None]:
        exchange = self.exchange
        raw = message.get("headers", ())
        content_type = None
        for key, value in raw:
            if key.lower() == b"content-type":
                content_type = value  # the last one counts, as for `respond`
        if exchange.leaves_alone(None if content_type is None else content_type.decode("latin-1")):
            return self.send(message)  # nothing to add: no headers to translate
        headers = []
        for key, value in raw:  # a loop: cheaper than a comprehension's call
            headers.append((key.decode("latin-1"), value.decode("latin-1")))
        status = message.get("status", 200)
        if exchange.flags is not None and exchange.flags_pending(status, headers):
            return self._flags_first(message, status, headers)
        plan = exchange.respond(status, headers)
        if plan is UNTOUCHED:  # the common case: nothing to add, no body to rewrite
            return self.send(message)
        return self._planned(message, plan)

    async def _flags_first(
        self, message: Message, status: int, headers: list[tuple[str, str]]
    ) -> None:
        exchange = self.exchange
        assert exchange.flags is not None
        # A remote flag evaluation must never hold the event loop.
        await asyncio.to_thread(exchange.flags.current, exchange.identity.distinct_id)
        await self._planned(message, exchange.respond(status, headers))

    def _planned(self, message: Message, plan: ResponsePlan) -> Awaitable[None]:
        if plan.headers:
            raw = list(message.get("headers", ()))
            for name, value in plan.headers:
                raw.append((name.encode("latin-1"), value.encode("latin-1")))
            message = {**message, "headers": raw}
        self.rewrite = plan.body
        if plan.body is None:
            return self.send(message)
        self.held = message
        return _nothing()

    async def _while_holding(self, message: Message) -> None:
        # One coroutine for the whole release (no nested ones): an HTML page
        # pays for it on every request.
        rewrite, held, send = self.rewrite, self.held, self.send
        assert rewrite is not None
        assert held is not None
        if message["type"] == "http.response.body":
            pieces = rewrite.feed(message.get("body", b""))
            if not message.get("more_body", False):
                pieces += rewrite.finish()
            if rewrite.holding:
                return
            # The last piece rides on the app's own message, with its more_body.
            last: Message = {**message, "body": pieces.pop() if pieces else b""}
        else:
            # Anything else (a file sent by path, trailers): give up, send as is.
            pieces, last = rewrite.finish(), message
        self.held = None
        await send({**held, "headers": rewrite.raw_headers(held["headers"])})
        for piece in pieces:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send(last)


async def _nothing() -> None:
    """What awaiting a held ``http.response.start`` does: nothing yet."""
