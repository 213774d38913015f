"""The first-party proxy over ASGI: the request body streamed up, PostHog's answer streamed out.

Everything runs on the event loop and nothing blocks it: the body's chunks go
upstream as `receive` hands them over (`upstream_async.AsyncUpstream`), and
the answer's chunks come back as PostHog sends them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING

from .proxy import ASGI_CONCURRENCY
from .proxy_replies import (
    BAD_PATH,
    TOO_LARGE,
    BodyIncomplete,
    BodyTooLarge,
    Reply,
    busy_reply,
    error_reply,
)

if TYPE_CHECKING:
    from .asgi_scope import Receive, Scope, Send
    from .proxy import Proxy
    from .upstream_async import Streamed

__all__ = ["forward"]


async def forward(proxy: Proxy, scope: Scope, path: str, receive: Receive, send: Send) -> None:
    """Answer a request under the proxy path by forwarding it to PostHog.

    Refusals (a bad path, a declared length over the bound, the cap reached)
    are answered before the body is read.
    """
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", ())]
    lowered = {name.lower(): value for name, value in headers}
    raw_path = scope.get("raw_path")
    if proxy.refuses(path, raw_path.decode("latin-1") if raw_path else None):
        await _answer(error_reply(400, BAD_PATH), send)
    elif proxy.too_large(lowered.get("content-length")):
        await _answer(error_reply(413, TOO_LARGE), send)
    elif not proxy.admit(ASGI_CONCURRENCY):
        await _answer(busy_reply(), send)
    else:
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                proxy.release()

        try:
            reply = await _forwarded(proxy, scope, path, headers, lowered, receive)
            await _answer(reply, send, release)
        finally:
            release()


async def _forwarded(
    proxy: Proxy,
    scope: Scope,
    path: str,
    headers: list[tuple[str, str]],
    lowered: dict[str, str],
    receive: Receive,
) -> Reply | Streamed:
    method = scope.get("method", "GET")
    declared = lowered.get("content-length")
    length = int(declared) if declared is not None else None
    chunked = "chunked" in lowered.get("transfer-encoding", "").lower()
    body: AsyncGenerator[bytes, None] | None = None
    if length or chunked or (length is None and method not in ("GET", "HEAD")):
        # A declared length was checked already; a body without one is bounded as it comes.
        body = _arriving(receive, proxy.timeout, proxy.max_body if length is None else None)
    query = scope.get("query_string", b"").decode("latin-1")
    client = scope.get("client")
    sent = proxy.request_headers(
        headers, client[0] if client else "", lowered.get("x-forwarded-for", "")
    )
    url = proxy.upstream(path, query)
    try:
        return await proxy.connections.forward(method, url, sent, body, length or None)
    finally:
        if body is not None:
            await body.aclose()


async def _arriving(
    receive: Receive, timeout: float, limit: int | None
) -> AsyncGenerator[bytes, None]:
    """The body's chunks as the server hands them over.

    Each wait is bounded by the proxy timeout: a browser silent that long, or
    gone, ends the body early (`BodyIncomplete`); past `limit` bytes, `BodyTooLarge`.
    """
    size = 0
    while True:
        try:
            message = await asyncio.wait_for(receive(), timeout)
        except asyncio.TimeoutError:
            raise BodyIncomplete from None
        if message["type"] != "http.request":
            raise BodyIncomplete
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise BodyTooLarge
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def _answer(
    reply: Reply | Streamed, send: Send, done: Callable[[], None] = lambda: None
) -> None:
    """Send `reply` chunk by chunk as it comes; its body is closed however this ends.

    `done` runs once the upstream answer is read, before the last message: a
    browser that sends its next request as soon as this one ends finds the
    place free again.
    """
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
    try:
        await send({"type": "http.response.start", "status": reply.status, "headers": raw})
        if isinstance(reply, Reply):
            for chunk in reply.body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        else:
            async for chunk in reply.body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        done()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        if isinstance(reply, Reply):
            reply.body.close()
        else:
            await reply.body.aclose()
