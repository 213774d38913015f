"""The first-party proxy over ASGI: the request body in, PostHog's answer streamed out."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .proxy import BAD_PATH, TOO_LARGE, error_reply

if TYPE_CHECKING:
    from .asgi_scope import Receive, Scope, Send
    from .proxy import Proxy, Reply

__all__ = ["forward"]


async def forward(proxy: Proxy, scope: Scope, path: str, receive: Receive, send: Send) -> None:
    """Answer a request under the proxy path by forwarding it to PostHog.

    The blocking client runs in the proxy's threads: the event loop keeps
    serving other requests while PostHog is slow.
    """
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", ())]
    reply = await _proxy_reply(proxy, scope, path, headers, receive)
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
    loop = asyncio.get_running_loop()
    body = reply.body
    try:
        await send({"type": "http.response.start", "status": reply.status, "headers": raw})
        while (chunk := await loop.run_in_executor(proxy.executor, next, body, b"")) != b"":
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        await loop.run_in_executor(proxy.executor, body.close)


async def _proxy_reply(
    proxy: Proxy, scope: Scope, path: str, headers: list[tuple[str, str]], receive: Receive
) -> Reply:
    lowered = {name.lower(): value for name, value in headers}
    raw_path = scope.get("raw_path")
    if proxy.refuses(path, raw_path.decode("latin-1") if raw_path else None):
        return error_reply(400, BAD_PATH)
    if proxy.too_large(lowered.get("content-length")):
        return error_reply(413, TOO_LARGE)
    parts: list[bytes] = []
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return error_reply(400, "the request ended before its body\n")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > proxy.max_body:
            return error_reply(413, TOO_LARGE)
        parts.append(chunk)
        more = message.get("more_body", False)
    query = scope.get("query_string", b"").decode("latin-1")
    client = scope.get("client")
    sent = proxy.request_headers(
        headers, client[0] if client else "", lowered.get("x-forwarded-for", "")
    )
    body = b"".join(parts)
    method = scope.get("method", "GET")
    return await asyncio.get_running_loop().run_in_executor(
        proxy.executor,
        proxy.forward,
        method,
        proxy.upstream(path, query),
        sent,
        body if body or method != "GET" else None,
    )
