"""The first-party proxy over ASGI: the request body streamed up, PostHog's answer streamed out.

The blocking client runs in the proxy's own threads; the event loop only
hands it the body's chunks as they arrive, and its answer's chunks back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from .proxy import (
    ASGI_CONCURRENCY,
    BAD_PATH,
    TOO_LARGE,
    BodyIncomplete,
    busy_reply,
    error_reply,
    limited,
)

if TYPE_CHECKING:
    from .asgi_scope import Receive, Scope, Send
    from .proxy import Proxy, Reply

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
        await _answer(proxy, error_reply(400, BAD_PATH), send)
    elif proxy.too_large(lowered.get("content-length")):
        await _answer(proxy, error_reply(413, TOO_LARGE), send)
    elif not proxy.admit(ASGI_CONCURRENCY):
        await _answer(proxy, busy_reply(), send)
    else:
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                proxy.release()

        try:
            reply = await _forwarded(proxy, scope, path, headers, lowered, receive)
            await _answer(proxy, reply, send, release)
        finally:
            release()


async def _forwarded(
    proxy: Proxy,
    scope: Scope,
    path: str,
    headers: list[tuple[str, str]],
    lowered: dict[str, str],
    receive: Receive,
) -> Reply:
    loop = asyncio.get_running_loop()
    method = scope.get("method", "GET")
    declared = lowered.get("content-length")
    length = int(declared) if declared is not None else None
    chunked = "chunked" in lowered.get("transfer-encoding", "").lower()
    body: Iterator[bytes] | None = None
    if length or chunked or (length is None and method not in ("GET", "HEAD")):
        body = _arriving(receive, loop, proxy.timeout)
        if length is None:
            body = limited(body, proxy.max_body)
    query = scope.get("query_string", b"").decode("latin-1")
    client = scope.get("client")
    sent = proxy.request_headers(
        headers, client[0] if client else "", lowered.get("x-forwarded-for", "")
    )
    url = proxy.upstream(path, query)
    return await loop.run_in_executor(
        proxy.executor, proxy.forward, method, url, sent, body, length or None
    )


def _arriving(receive: Receive, loop: asyncio.AbstractEventLoop, timeout: float) -> Iterator[bytes]:
    """The body's chunks, pulled from the event loop by the proxy's thread as it sends.

    Each wait is bounded by the proxy timeout: a browser silent that long, or
    gone, ends the body early (`BodyIncomplete`).
    """

    async def next_message() -> Any:
        return await receive()

    while True:
        future = asyncio.run_coroutine_threadsafe(next_message(), loop)
        try:
            message = future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise BodyIncomplete from None
        if message["type"] != "http.request":
            raise BodyIncomplete
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def _answer(
    proxy: Proxy, reply: Reply, send: Send, done: Callable[[], None] = lambda: None
) -> None:
    """Send `reply`; PostHog's body is read in the proxy's threads, ours in place.

    `done` runs once the upstream answer is read, before the last message: a
    browser that sends its next request as soon as this one ends finds the
    place free again.
    """
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
    loop = asyncio.get_running_loop()
    body = reply.body
    try:
        await send({"type": "http.response.start", "status": reply.status, "headers": raw})
        if reply.own:
            for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        else:
            while (chunk := await loop.run_in_executor(proxy.executor, next, body, b"")) != b"":
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        done()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        if reply.own:
            body.close()
        else:
            await loop.run_in_executor(proxy.executor, body.close)
