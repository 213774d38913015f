"""WSGI adapter: translates environ/start_response for the engine; no identity logic."""

from __future__ import annotations

import contextvars
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .context import bind, rebind
from .engine import BYPASSED, Engine, Exchange, RequestInfo, logger
from .html import grown_length
from .identity import NOTHING, Report

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from posthog.client import Client

    from .engine import ConsentHook
    from .flags import FlagContextHook
    from .html import HtmlInjector
    from .settings import Settings

__all__ = ["IdentityMiddleware"]

UserIdCallback = Callable[["WSGIEnvironment"], object]
Write = Callable[[bytes], object]


class IdentityMiddleware:
    """Wrap a WSGI app: ``app = IdentityMiddleware(app)``.

    :param settings: default ``Settings.from_env()``.
    :param user_id: ``callable(environ)`` returning the user's id, or None when
        nobody is logged in; default: ``environ["REMOTE_USER"]`` when present.
    :param client: a ``posthog.Client``; default: one built from the settings.
    :param init_options: extra posthog-js ``init`` options for the snippet.
    :param flag_context: ``callable(native request) -> FlagContext`` giving person
        properties and groups for flag evaluation (POSTHOG_IDENTITY_BOOTSTRAP_FLAGS).
    :param consent: ``callable(environ)`` returning True (consented), False
        (refused) or None (no record: the consent cookie decides), read when
        POSTHOG_IDENTITY_CONSENT is opt-in or opt-out; one that raises means
        no consent for that request.
    """

    def __init__(
        self,
        app: WSGIApplication,
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

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self.engine.bypasses(environ.get("PATH_INFO", "")):
            environ[BYPASSED] = True
            return self.app(environ, start_response)
        try:
            get = environ.get
            request = RequestInfo(
                get("REQUEST_METHOD", "GET"),
                get("wsgi.url_scheme", "http"),
                get("PATH_INFO", ""),
                get("HTTP_COOKIE", ""),
                get("HTTP_SEC_GPC", ""),
                get("HTTP_DNT", ""),
            )
            exchange = self.engine.begin(request, self.read_user(environ), environ)
        except Exception:
            logger.exception("posthog_identity: could not start; the request passes through")
            return self.app(environ, start_response)

        response = _Response(self, environ, exchange, start_response)
        # The app and its iterable run in one private context, so captures made
        # while a streamed body is produced still carry this request's identity.
        context = contextvars.copy_context()
        binding = bind(exchange)
        context.run(binding.__enter__)
        try:
            result = context.run(self.app, environ, response.start_response)
        except BaseException as error:
            context.run(binding.__exit__, type(error), error, error.__traceback__)
            raise
        return _BoundBody(result, response, context, binding)

    def read_user(self, environ: WSGIEnvironment) -> Report:
        if self.user_id is not None:
            callback = self.user_id
            return self.engine.read_user(lambda: callback(environ))
        if "REMOTE_USER" in environ:
            return self.engine.coerce(environ["REMOTE_USER"])
        return NOTHING


class _Response:
    """One response's head: identity headers, and holding it while the HTML is scanned.

    The server's ``start_response`` must see the final Content-Length, so for an
    HTML page it is called only once the injector has decided; no body byte is
    passed on before that.
    """

    def __init__(
        self,
        middleware: IdentityMiddleware,
        environ: WSGIEnvironment,
        exchange: Exchange,
        start_response: StartResponse,
    ) -> None:
        self.middleware = middleware
        self.environ = environ
        self.exchange = exchange
        self.server_start_response = start_response
        self.injector: HtmlInjector | None = None
        self.held: tuple[str, list[tuple[str, str]], Any] | None = None
        self.server_write: Write | None = None

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Write:
        exchange = self.exchange
        if not exchange.explicit:
            # Read again: the app may have authenticated the user by now.
            try:
                report = self.middleware.read_user(self.environ)
                if exchange.changes(report):
                    rebind(exchange, lambda: exchange.report(report))
            except Exception:
                logger.exception("posthog_identity: re-reading the user failed")
        headers = headers + exchange.finish(headers)
        if self.server_write is not None:
            # Headers already sent: the server re-raises exc_info, as PEP 3333 says.
            return self.server_start_response(status, headers, exc_info)
        self.injector = exchange.injector(_status_code(status), headers)
        if self.injector is None:
            self.held = None
            self.server_write = self.server_start_response(status, headers, exc_info)
        else:
            self.held = (status, headers, exc_info)
        return self.write

    @property
    def holding(self) -> bool:
        return self.held is not None

    def release(self) -> None:
        """Send the held head, with Content-Length corrected for the snippet."""
        assert self.held is not None
        assert self.injector is not None
        status, headers, exc_info = self.held
        self.held = None
        injector = self.injector
        headers = [
            (name, grown_length(value, injector) if name.lower() == "content-length" else value)
            for name, value in headers
        ]
        self.server_write = self.server_start_response(status, headers, exc_info)

    def transform(self, chunk: bytes) -> list[bytes]:
        """Pass a body chunk through the injector; release the head once it decided."""
        if not self.holding:
            return [chunk]
        assert self.injector is not None
        pieces = self.injector.feed(chunk)
        if self.injector.decided:
            self.release()
        return pieces

    def finish(self) -> list[bytes]:
        if not self.holding:
            return []
        assert self.injector is not None
        pieces = self.injector.finish()
        self.release()
        return pieces

    def write(self, data: bytes) -> object:
        """The app's legacy write(): goes through the injector like any chunk."""
        result = None
        for piece in self.transform(data):
            if self.server_write is not None:
                result = self.server_write(piece)
        return result


class _BoundBody:
    """The app's iterable, iterated and closed inside the request's context."""

    def __init__(
        self,
        iterable: Iterable[bytes],
        response: _Response,
        context: contextvars.Context,
        binding: bind,
    ) -> None:
        self._iterable = iterable
        self._iterator: Iterator[bytes] | None = None
        self._response = response
        self._context = context
        self._exhausted = False
        self._pending: deque[bytes] = deque()  # pieces of one chunk, split around the snippet
        self._binding: bind | None = binding

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        pending = self._pending
        if pending:
            return pending.popleft()
        if self._exhausted:
            raise StopIteration
        if self._iterator is None:
            self._iterator = self._context.run(iter, self._iterable)
        response = self._response
        while True:
            try:
                chunk = self._context.run(next, self._iterator)
            except StopIteration:
                self._exhausted = True
                pending.extend(response.finish())
                if pending:
                    return pending.popleft()
                raise
            pieces = response.transform(chunk)
            # While the head is held nothing may be yielded, not even b"".
            if response.holding:
                continue
            if len(pieces) == 1:
                return pieces[0]
            pending.extend(pieces)
            if pending:
                return pending.popleft()

    def close(self) -> None:
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                self._context.run(close)
        finally:
            self._leave()

    def _leave(self) -> None:
        """Leave the request's posthog context, inside the request's own context, once."""
        binding, self._binding = self._binding, None
        if binding is not None:
            self._context.run(binding.__exit__, None, None, None)

    def __del__(self) -> None:
        # PEP 3333 servers call close(); a test client that drops the body
        # unclosed still leaves the context inside the request's own context,
        # not in whichever one the garbage collector runs in.
        self._leave()


def _status_code(status: str) -> int:
    try:
        return int(status.split(" ", 1)[0])
    except ValueError:
        return 0
