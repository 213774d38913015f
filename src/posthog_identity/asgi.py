"""ASGI adapter (pure ASGI, no BaseHTTPMiddleware): translates scope/receive/send."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from .context import bind, settle
from .engine import BYPASSED, Engine, logger
from .exchange import Exchange, RequestInfo
from .identity import NOTHING, Report
from .proxy import TOO_LARGE, error_reply

if TYPE_CHECKING:
    from posthog.client import Client

    from .consent import ConsentHook
    from .flags import FlagContextHook
    from .proxy import Proxy, Reply
    from .response import BodyRewrite
    from .settings import Settings

__all__ = ["IdentityMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
UserIdCallback = Callable[[Scope], object]


class IdentityMiddleware:
    """Wrap an ASGI app: ``IdentityMiddleware(app)`` or ``app.add_middleware(...)``.

    :param settings: default ``Settings.from_env()``.
    :param user_id: ``callable(scope)``, sync or async, returning the user's id
        or None when nobody is logged in; default: ``scope["user"]`` as set by
        Starlette's ``AuthenticationMiddleware``, read again when the response
        starts so an authentication middleware inside this one is seen.
    :param client: a ``Client``; default: one built from the settings.
    :param consent: ``callable(scope)`` (a plain function) returning True
        (consented), False (refused) or None (no record: the consent cookie
        decides), read when POSTHOG_IDENTITY_CONSENT is opt-in or opt-out; one
        that raises means no consent for that request.
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings | None = None,
        *,
        user_id: UserIdCallback | None = None,
        client: Client | None = None,
        init_options: Mapping[str, Any] | None = None,
        flag_context: FlagContextHook | None = None,
        consent: ConsentHook | None = None,
    ) -> None:
        self.app = app
        self.user_id = user_id
        self.engine = Engine(settings, client, init_options, flag_context, consent)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = _path(scope)
        proxy = self.engine.proxy
        if proxy is not None and kind == "http" and proxy.matches(path):
            await _forward(proxy, scope, path, receive, send)
            return
        if self.engine.bypasses(path):
            scope[BYPASSED] = True
            await self.app(scope, receive, send)
            return
        try:
            request, distinct = _request_info(scope, path)
            exchange = Exchange(self.engine, request, await self.read_user(scope), scope)
            if distinct:
                _vouch(scope, exchange.identity.distinct_id)
        except Exception:
            logger.exception("posthog_identity: could not start; the request passes through")
            await self.app(scope, receive, send)
            return
        with bind(exchange):
            if kind == "websocket":
                # Identity for the context only: a websocket sets no cookie.
                await self.app(scope, receive, send)
            else:
                await self.app(scope, receive, _Responder(self, scope, exchange, send))

    async def read_user(self, scope: Scope) -> Report:
        if self.user_id is None and "user" not in scope:
            return NOTHING
        if self.user_id is not None:
            try:
                value = self.user_id(scope)
                if inspect.isawaitable(value):
                    value = await value
            except Exception as error:
                self.engine.callback_failed(error)
                return NOTHING
            return self.engine.coerce(value)
        return self.engine.read_user(lambda: starlette_user(scope["user"]))

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass lifespan through; deliver queued events before shutdown completes."""
        flushed = False

        async def flush() -> None:
            nonlocal flushed
            if not flushed:
                flushed = True
                await asyncio.to_thread(self.engine.flush)

        async def send_after_flush(message: Message) -> None:
            if message["type"] in (
                "lifespan.shutdown.complete",
                "lifespan.shutdown.failed",
            ):
                await flush()
            await send(message)

        await self.app(scope, receive, send_after_flush)


class _Responder:
    """Wraps `send` for one response: identity headers, then the HTML body rewrite.

    An HTML page's ``http.response.start`` is held only until the rewrite has
    decided, so its Content-Length can be corrected; other messages pass through.
    """

    __slots__ = ("exchange", "held", "middleware", "rewrite", "scope", "send")

    def __init__(
        self, middleware: IdentityMiddleware, scope: Scope, exchange: Exchange, send: Send
    ) -> None:
        self.middleware = middleware
        self.scope = scope
        self.exchange = exchange
        self.send = send
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
        exchange, middleware = self.exchange, self.middleware
        if not exchange.explicit and (middleware.user_id is not None or "user" in self.scope):
            settle(exchange, await middleware.read_user(self.scope))
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


async def _forward(proxy: Proxy, scope: Scope, path: str, receive: Receive, send: Send) -> None:
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


def starlette_user(user: object) -> object:
    """Starlette's user: authenticated -> identity (else display_name); else nobody."""
    if not getattr(user, "is_authenticated", False):
        return None
    try:
        return user.identity  # type: ignore[attr-defined]
    except (AttributeError, NotImplementedError):
        return getattr(user, "display_name", None)


def _path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    # Starlette and recent servers include the mount point in `path`; it ends
    # at a segment boundary (root_path "/app" is not the start of "/apple").
    if root and path.startswith(root):
        rest = path[len(root) :]
        if not rest or rest[0] == "/":
            return rest or "/"
    return path


# Request headers the core reads, by name -> their field in `RequestInfo`.
_FIELDS = {
    b"sec-gpc": "sec_gpc",
    b"dnt": "dnt",
    b"host": "host",
    b"user-agent": "user_agent",
    b"x-forwarded-for": "forwarded_for",
    b"x-posthog-session-id": "session_header",
    b"x-posthog-window-id": "window_header",
}
_DISTINCT_ID = b"x-posthog-distinct-id"


def _request_info(scope: Scope, path: str) -> tuple[RequestInfo, bool]:
    """The request, and whether it carries X-POSTHOG-DISTINCT-ID."""
    cookies: list[str] = []
    found: dict[str, str] = {}
    distinct = False
    for key, value in scope.get("headers", ()):
        # Servers send lower-case names; a hand-built scope may not.
        name = key if key.islower() else key.lower()
        if name == b"cookie":
            cookies.append(value.decode("latin-1"))
        elif name in _FIELDS:
            found.setdefault(_FIELDS[name], value.decode("latin-1"))
        elif name == _DISTINCT_ID:
            distinct = True
    client = scope.get("client")
    if "host" not in found:
        server = scope.get("server")
        if server:
            default = server[1] in (None, 443 if scope.get("scheme") == "https" else 80)
            found["host"] = server[0] if default else f"{server[0]}:{server[1]}"
    request = RequestInfo(
        scope.get("method", "GET"),
        scope.get("scheme", "http"),
        path,
        cookies[0] if len(cookies) == 1 else "; ".join(cookies),
        url_path=scope.get("path", ""),
        peer=client[0] if client else "",
        **found,
    )
    return request, distinct


def _vouch(scope: Scope, distinct_id: str) -> None:
    """Replace X-POSTHOG-DISTINCT-ID with the verified distinct id, so that a
    middleware inside ours which trusts the header (posthog's own) agrees."""
    try:
        value = distinct_id.encode("latin-1")
    except UnicodeEncodeError:
        value = b""  # not representable in a header: the header goes
    headers = [(k, v) for k, v in scope.get("headers", ()) if k.lower() != _DISTINCT_ID]
    if value:
        headers.append((_DISTINCT_ID, value))
    scope["headers"] = headers
