"""ASGI adapter (pure ASGI, no BaseHTTPMiddleware): translates scope/receive/send."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from .context import bind, rebind
from .engine import BYPASSED, Engine, Exchange, RequestInfo, logger
from .html import grown_length
from .identity import NOTHING, Report
from .lifespan import serve_lifespan

if TYPE_CHECKING:
    from posthog.client import Client

    from .engine import ConsentHook
    from .flags import FlagContextHook
    from .html import HtmlInjector
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
        if self.engine.bypasses(path):
            scope[BYPASSED] = True
            await self.app(scope, receive, send)
            return
        try:
            exchange = self.engine.begin(
                _request_info(scope, path), await self.read_user(scope), scope
            )
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
        """The app's lifespan (or ours, if it refuses it); queued events go out before shutdown."""
        flush = self.engine.flush
        await serve_lifespan(
            self.app, scope, receive, send, on_shutdown=lambda: asyncio.to_thread(flush)
        )


class _Responder:
    """Wraps `send` for one response: identity headers, then the HTML injection.

    An HTML page's ``http.response.start`` is held only until the injector has
    decided, so its Content-Length can be corrected; other messages pass through.
    """

    __slots__ = ("exchange", "held", "injector", "middleware", "scope", "send")

    def __init__(
        self, middleware: IdentityMiddleware, scope: Scope, exchange: Exchange, send: Send
    ) -> None:
        self.middleware = middleware
        self.scope = scope
        self.exchange = exchange
        self.send = send
        self.injector: HtmlInjector | None = None
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
            # Read again: an auth middleware inside this one has run by now.
            report = await middleware.read_user(self.scope)
            if exchange.changes(report):
                rebind(exchange, lambda: exchange.report(report))
        raw = list(message.get("headers", ()))
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
        extra = exchange.finish(headers)
        status = message.get("status", 200)
        if exchange.flags_would_wait(status, headers + extra):
            # A remote flag evaluation must never hold the event loop.
            await asyncio.to_thread(exchange.flags)
        if extra:
            headers += extra
            message = {
                **message,
                "headers": raw + [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra],
            }
        self.injector = exchange.injector(status, headers)
        if self.injector is None:
            await self.send(message)
        else:
            self.held = message

    async def _while_holding(self, message: Message) -> None:
        injector = self.injector
        assert injector is not None
        if message["type"] != "http.response.body":
            # Anything else (a file sent by path, trailers): give up, send as is.
            held = injector.finish()
            await self._release()
            await self._send_pieces(held)
            await self.send(message)
            return
        pieces = injector.feed(message.get("body", b""))
        if not message.get("more_body", False):
            pieces += injector.finish()
        if injector.decided:
            await self._release()
            # The last piece rides on the app's own message, with its more_body.
            await self._send_pieces(pieces[:-1])
            await self.send({**message, "body": pieces[-1] if pieces else b""})

    async def _send_pieces(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            await self.send({"type": "http.response.body", "body": piece, "more_body": True})

    async def _release(self) -> None:
        assert self.held is not None
        assert self.injector is not None
        held, self.held = self.held, None
        injector = self.injector
        headers = [
            (k, grown_length(v.decode("latin-1"), injector).encode("latin-1"))
            if k.lower() == b"content-length"
            else (k, v)
            for k, v in held["headers"]
        ]
        await self.send({**held, "headers": headers})


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
    # Starlette and recent servers include the mount point in `path`.
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def _request_info(scope: Scope, path: str) -> RequestInfo:
    cookies: list[str] = []
    sec_gpc = dnt = ""
    for key, value in scope.get("headers", ()):
        # Servers send lower-case names (ASGI); the length test keeps the
        # case-insensitive comparison off the path of every other header.
        size = len(key)
        if size == 6 and key.lower() == b"cookie":
            cookies.append(value.decode("latin-1"))
        elif size == 7 and key.lower() == b"sec-gpc":
            sec_gpc = value.decode("latin-1")
        elif size == 3 and key.lower() == b"dnt":
            dnt = value.decode("latin-1")
    return RequestInfo(
        scope.get("method", "GET"),
        scope.get("scheme", "http"),
        path,
        cookies[0] if len(cookies) == 1 else "; ".join(cookies),
        sec_gpc,
        dnt,
    )
