"""WSGI adapter: translates environ/start_response for the engine; no identity logic."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from .context import bind, rebind
from .engine import Engine, RequestInfo, logger
from .identity import NOTHING, Report

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from posthog.client import Client

    from .settings import Settings

__all__ = ["IdentityMiddleware"]

UserIdCallback = Callable[["WSGIEnvironment"], object]


class IdentityMiddleware:
    """Wrap a WSGI app: ``app = IdentityMiddleware(app)``.

    :param settings: default ``Settings.from_env()``.
    :param user_id: ``callable(environ)`` returning the user's id, or None when
        nobody is logged in; default: ``environ["REMOTE_USER"]`` when present.
    :param client: a ``Client``; default: one built from the settings.
    """

    def __init__(
        self,
        app: WSGIApplication,
        settings: Settings | None = None,
        *,
        user_id: UserIdCallback | None = None,
        client: Client | None = None,
    ) -> None:
        self.app = app
        self.user_id = user_id
        self.engine = Engine(settings, client)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self.engine.bypasses(environ.get("PATH_INFO", "")):
            return self.app(environ, start_response)
        try:
            request = RequestInfo(
                method=environ.get("REQUEST_METHOD", "GET"),
                scheme=environ.get("wsgi.url_scheme", "http"),
                path=environ.get("PATH_INFO", ""),
                cookie_header=environ.get("HTTP_COOKIE", ""),
            )
            exchange = self.engine.begin(request, self._read_user(environ))
        except Exception:
            logger.exception("posthog_identity: could not start; the request passes through")
            return self.app(environ, start_response)

        def identity_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            if not exchange.explicit:
                # Read again: the app may have authenticated the user by now.
                try:
                    rebind(exchange, lambda: exchange.report(self._read_user(environ)))
                except Exception:
                    logger.exception("posthog_identity: re-reading the user failed")
            return start_response(status, headers + exchange.finish(headers), exc_info)

        # The app and its iterable run in one private context, so captures made
        # while a streamed body is produced still carry this request's identity.
        context = contextvars.copy_context()
        scope = ExitStack()
        context.run(scope.enter_context, bind(exchange))
        try:
            result = context.run(self.app, environ, identity_start_response)
        except BaseException:
            context.run(scope.close)
            raise
        return _BoundResponse(result, context, scope)

    def _read_user(self, environ: WSGIEnvironment) -> Report:
        if self.user_id is not None:
            callback = self.user_id
            return self.engine.read_user(lambda: callback(environ))
        if "REMOTE_USER" in environ:
            return self.engine.coerce(environ["REMOTE_USER"])
        return NOTHING


class _BoundResponse:
    """The app's iterable, iterated and closed inside the request's context."""

    def __init__(
        self, iterable: Iterable[bytes], context: contextvars.Context, scope: ExitStack
    ) -> None:
        self._iterable = iterable
        self._iterator: Iterator[bytes] | None = None
        self._context = context
        self._scope = scope

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = self._context.run(iter, self._iterable)
        return self._context.run(next, self._iterator)

    def close(self) -> None:
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                self._context.run(close)
        finally:
            self._context.run(self._scope.close)
