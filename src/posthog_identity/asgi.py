"""ASGI adapter (pure ASGI, no BaseHTTPMiddleware): translates scope/receive/send."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from .asgi_proxy import forward
from .asgi_scope import (
    ASGIApp,
    Receive,
    Scope,
    Send,
    header,
    mount_path,
    request_info,
    vouch,
)
from .asgi_send import Responder
from .context import bind, enrich_events
from .engine import BYPASSED, Engine, logger
from .errors import capture_unhandled
from .exchange import Exchange
from .identity import NOTHING, Absent, Report
from .lifespan import serve_lifespan

if TYPE_CHECKING:
    from posthog.client import Client

    from .consent import ConsentHook
    from .flags import FlagContextHook
    from .settings import Settings

__all__ = ["IdentityMiddleware"]

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
        enrich_events(self.engine.client)
        # Only these settings, or a CORS preflight, make a request pass through.
        config = self.engine.settings
        self._filters = config.disabled or bool(config.exclude_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = mount_path(scope)
        proxy = self.engine.proxy
        if proxy is not None and kind == "http" and proxy.matches(path):
            await forward(proxy, scope, path, receive, send)
            return
        method = scope.get("method", "")
        if (self._filters or method == "OPTIONS") and self.engine.bypasses(
            path, method, header, scope
        ):
            scope[BYPASSED] = True
            await self.app(scope, receive, send)
            return
        try:
            request, distinct = request_info(scope, path)
            report = self.user_now(scope)
            if not isinstance(report, (str, Absent)):  # a callback to await
                report = await report
            exchange = Exchange(self.engine, request, report, scope)
            if distinct:
                vouch(scope, exchange.identity.distinct_id)
        except Exception:
            logger.exception("posthog_identity: could not start; the request passes through")
            await self.app(scope, receive, send)
            return
        with bind(exchange):
            try:
                if kind == "websocket":
                    # Identity for the context only: a websocket sets no cookie.
                    await self.app(scope, receive, send)
                else:
                    # An authentication middleware inside ours may set scope["user"] later.
                    await self.app(scope, receive, Responder(exchange, send, self.user_now, scope))
            except Exception as error:
                capture_unhandled(error, "asgi.middleware")
                raise

    def user_now(self, scope: Scope) -> Report | Coroutine[Any, Any, Report]:
        """`read_user`, without a coroutine to await when no callback may need one
        (``scope["user"]`` or nothing): the common case pays no await."""
        if self.user_id is not None:
            return self.read_user(scope)
        if "user" not in scope:
            return NOTHING
        return self.engine.read_user(lambda: starlette_user(scope["user"]))

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


def starlette_user(user: object) -> object:
    """Starlette's user: authenticated -> identity (else display_name); else nobody."""
    if not getattr(user, "is_authenticated", False):
        return None
    try:
        return user.identity  # type: ignore[attr-defined]
    except (AttributeError, NotImplementedError):
        return getattr(user, "display_name", None)
