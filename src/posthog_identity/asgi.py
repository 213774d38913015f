"""ASGI adapter (pure ASGI, no BaseHTTPMiddleware): translates scope/receive/send."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from .context import bind, rebind
from .engine import Engine, Exchange, RequestInfo, logger
from .identity import NOTHING, Report

if TYPE_CHECKING:
    from posthog.client import Client

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
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings | None = None,
        *,
        user_id: UserIdCallback | None = None,
        client: Client | None = None,
    ) -> None:
        self.app = app
        self.user_id = user_id
        self.engine = Engine(settings, client)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind not in ("http", "websocket") or self.engine.bypasses(_path(scope)):
            await self.app(scope, receive, send)
            return
        try:
            exchange = self.engine.begin(_request_info(scope), await self._read_user(scope))
        except Exception:
            logger.exception("posthog_identity: could not start; the request passes through")
            await self.app(scope, receive, send)
            return
        with bind(exchange):
            if kind == "websocket":
                # Identity for the context only: a websocket sets no cookie.
                await self.app(scope, receive, send)
            else:
                await self.app(scope, receive, self._responder(scope, exchange, send))

    def _responder(self, scope: Scope, exchange: Exchange, send: Send) -> Send:
        async def send_with_identity(message: Message) -> None:
            if message["type"] == "http.response.start":
                if not exchange.explicit:
                    # Read again: an auth middleware inside this one has run by now.
                    report = await self._read_user(scope)
                    rebind(exchange, lambda: exchange.report(report))
                headers = list(message.get("headers", ()))
                decoded = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
                extra = exchange.finish(decoded)
                if extra:
                    message = dict(message)
                    message["headers"] = headers + [
                        (k.encode("latin-1"), v.encode("latin-1")) for k, v in extra
                    ]
            await send(message)

        return send_with_identity

    async def _read_user(self, scope: Scope) -> Report:
        if self.user_id is not None:
            try:
                value = self.user_id(scope)
                if inspect.isawaitable(value):
                    value = await value
            except Exception as error:
                self.engine.callback_failed(error)
                return NOTHING
            return self.engine.coerce(value)
        if "user" not in scope:
            return NOTHING
        return self.engine.read_user(lambda: _starlette_user(scope["user"]))

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


def _starlette_user(user: object) -> object:
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


def _request_info(scope: Scope) -> RequestInfo:
    cookies = [v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == b"cookie"]
    return RequestInfo(
        method=scope.get("method", "GET"),
        scheme=scope.get("scheme", "http"),
        path=_path(scope),
        cookie_header="; ".join(cookies),
    )
