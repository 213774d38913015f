"""The ASGI response side: identity headers, and the HTML body rewrite, over `send`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .context import settle

if TYPE_CHECKING:
    from .asgi_scope import Message, Send
    from .exchange import Exchange
    from .identity import Report
    from .response import BodyRewrite

__all__ = ["Responder"]


class Responder:
    """Wraps `send` for one response: identity headers, then the HTML body rewrite.

    An HTML page's ``http.response.start`` is held only until the rewrite has
    decided, so its Content-Length can be corrected; other messages pass through.
    """

    __slots__ = ("exchange", "held", "reread", "rewrite", "send")

    def __init__(
        self, exchange: Exchange, send: Send, reread: Callable[[], Awaitable[Report]]
    ) -> None:
        """`reread` asks the user source again when the response starts."""
        self.exchange = exchange
        self.send = send
        self.reread = reread
        self.rewrite: BodyRewrite | None = None
        self.held: Message | None = None

    async def __call__(self, message: Message) -> None:
        if self.held is not None:
            await self._while_holding(message)
        elif message["type"] == "http.response.start":
            await self._start(message)
        else:
            await self.send(message)

    async def _start(self, message: Message) -> None:
        exchange = self.exchange
        if not exchange.explicit:
            # An authentication middleware inside ours has run by now.
            settle(exchange, await self.reread())
        raw = message.get("headers", ())
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
        status = message.get("status", 200)
        if exchange.flags_pending(status, headers) and exchange.flags is not None:
            # A remote flag evaluation must never hold the event loop.
            await asyncio.to_thread(exchange.flags.current, exchange.identity.distinct_id)
        plan = exchange.respond(status, headers)
        if plan.headers:
            added = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in plan.headers]
            message = {**message, "headers": [*raw, *added]}
        self.rewrite = plan.body
        if plan.body is None:
            await self.send(message)
        else:
            self.held = message

    async def _while_holding(self, message: Message) -> None:
        rewrite = self.rewrite
        assert rewrite is not None
        if message["type"] != "http.response.body":
            # Anything else (a file sent by path, trailers): give up, send as is.
            held = rewrite.finish()
            await self._release(rewrite)
            await self._send_pieces(held)
            await self.send(message)
            return
        pieces = rewrite.feed(message.get("body", b""))
        if not message.get("more_body", False):
            pieces += rewrite.finish()
        if not rewrite.holding:
            await self._release(rewrite)
            # The last piece rides on the app's own message, with its more_body.
            await self._send_pieces(pieces[:-1])
            await self.send({**message, "body": pieces[-1] if pieces else b""})

    async def _send_pieces(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            await self.send({"type": "http.response.body", "body": piece, "more_body": True})

    async def _release(self, rewrite: BodyRewrite) -> None:
        assert self.held is not None
        held, self.held = self.held, None
        await self.send({**held, "headers": rewrite.raw_headers(held["headers"])})
