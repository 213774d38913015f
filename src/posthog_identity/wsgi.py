"""WSGI adapter: translates environ/start_response for the engine; no identity logic."""

from __future__ import annotations

import contextvars
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .context import bind, settle
from .engine import BYPASSED, Engine, logger
from .exchange import Exchange, RequestInfo
from .identity import NOTHING, Report
from .proxy import TOO_LARGE, error_reply, status_line

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from posthog.client import Client

    from .consent import ConsentHook
    from .flags import FlagContextHook
    from .proxy import Proxy, Reply
    from .response import BodyRewrite
    from .settings import Settings

__all__ = ["IdentityMiddleware"]

UserIdCallback = Callable[["WSGIEnvironment"], object]


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
        get = environ.get
        proxy = self.engine.proxy
        if proxy is not None and proxy.matches(get("PATH_INFO", "")):
            return _forward(proxy, environ, start_response)
        if self.engine.bypasses(get("PATH_INFO", "")):
            environ[BYPASSED] = True
            return self.app(environ, start_response)
        try:
            path = get("PATH_INFO", "")
            request = RequestInfo(
                get("REQUEST_METHOD", "GET"),
                get("wsgi.url_scheme", "http"),
                path,
                get("HTTP_COOKIE", ""),
                get("HTTP_SEC_GPC", ""),
                get("HTTP_DNT", ""),
                get("HTTP_HOST") or _server_host(environ),
                get("SCRIPT_NAME", "") + path,
                get("HTTP_USER_AGENT", ""),
                get("REMOTE_ADDR", ""),
                get("HTTP_X_FORWARDED_FOR", ""),
                get("HTTP_X_POSTHOG_SESSION_ID", ""),
                get("HTTP_X_POSTHOG_WINDOW_ID", ""),
            )
            exchange = Exchange(self.engine, request, self.read_user(environ), environ)
            if _DISTINCT_ID in environ:
                # A middleware inside ours that trusts this header (posthog's
                # own) must agree with the verified distinct id.
                environ[_DISTINCT_ID] = exchange.identity.distinct_id
        except Exception:
            logger.exception("posthog_identity: could not start; the request passes through")
            return self.app(environ, start_response)
        # The app and its iterable run in one private context, so captures made
        # while a streamed body is produced still carry this request's identity.
        body = _Body(_Head(self, environ, exchange, start_response), bind(exchange))
        body.run(self.app, environ)
        return body

    def read_user(self, environ: WSGIEnvironment) -> Report:
        if self.user_id is not None:
            callback = self.user_id
            return self.engine.read_user(lambda: callback(environ))
        if "REMOTE_USER" in environ:
            return self.engine.coerce(environ["REMOTE_USER"])
        return NOTHING


class _Head:
    """One response's head: identity headers, held while an HTML page's start is scanned."""

    __slots__ = (
        "environ",
        "exchange",
        "held",
        "middleware",
        "pending",
        "rewrite",
        "server",
        "write_body",
    )

    def __init__(
        self,
        middleware: IdentityMiddleware,
        environ: WSGIEnvironment,
        exchange: Exchange,
        server: StartResponse,
    ) -> None:
        self.middleware = middleware
        self.environ = environ
        self.exchange = exchange
        self.server = server
        self.rewrite: BodyRewrite | None = None
        self.held: tuple[str, list[tuple[str, str]], Any] | None = None
        self.pending = True  # the server's start_response has not been called yet
        self.write_body: Callable[[bytes], object] | None = None  # the server's write()

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        exchange = self.exchange
        if not exchange.explicit:
            try:
                settle(exchange, self.middleware.read_user(self.environ))
            except Exception:
                logger.exception("posthog_identity: re-reading the user failed")
        plan = exchange.respond(_status_code(status), headers)
        headers = headers + list(plan.headers)
        if not self.pending:
            # Headers already sent: the server re-raises exc_info, as PEP 3333 says.
            return self.server(status, headers, exc_info)
        # A second call (an error page) replaces the held head and what it held.
        self.rewrite, self.held = plan.body, (status, headers, exc_info)
        if plan.body is None:
            self.release()
        return self.write

    def release(self) -> None:
        assert self.held is not None
        status, headers, exc_info = self.held
        if self.rewrite is not None:
            headers = self.rewrite.headers(headers)
        self.held = None
        self.pending = False
        self.write_body = self.server(status, headers, exc_info)

    def pieces(self, chunk: bytes) -> list[bytes]:
        """A body chunk through the rewrite; the head goes out once it has decided."""
        rewrite = self.rewrite
        if rewrite is None or not self.pending:
            return [chunk]
        pieces = rewrite.feed(chunk)
        if not rewrite.holding:
            self.release()
        return pieces

    def finish(self) -> list[bytes]:
        if self.held is None or self.rewrite is None:
            return []
        pieces = self.rewrite.finish()
        self.release()
        return pieces

    def write(self, data: bytes) -> object:
        """The app's legacy write(): goes through the rewrite like any chunk."""
        result = None
        for piece in self.pieces(data):
            if self.write_body is not None:
                result = self.write_body(piece)
        return result


class _Body:
    """The app's iterable, iterated and closed inside the request's context.

    `run` calls the app and reads its body until the head has gone to the
    server: some servers (granian) read status and headers as soon as the
    application returns, so the look-ahead is spent inside the call.
    """

    def __init__(self, head: _Head, binding: bind) -> None:
        self._head = head
        self._context = contextvars.copy_context()
        self._binding: bind | None = binding
        self._iterable: Iterable[bytes] = ()
        self._iterator: Iterator[bytes] = iter(())
        self._ready: deque[bytes] = deque()  # pieces read ahead, or split around the snippet
        self._context.run(binding.__enter__)

    def run(self, app: WSGIApplication, environ: WSGIEnvironment) -> None:
        run, head = self._context.run, self._head
        try:
            self._iterable = run(app, environ, head.start_response)
            self._iterator = run(iter, self._iterable)
            while head.pending and self._read():
                pass
        except BaseException as error:
            # The server never sees this iterable, so it is closed here.
            try:
                self._close_iterable()
            finally:
                self._leave(type(error), error, error.__traceback__)
            raise

    def _read(self) -> bool:
        """One chunk of the app's into `_ready`; False once the body has ended."""
        try:
            chunk = self._context.run(next, self._iterator)
        except StopIteration:
            self._ready.extend(self._head.finish())
            self._iterator = iter(())
            return False
        self._ready.extend(self._head.pieces(chunk))
        return True

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        ready = self._ready
        while not ready:
            if not self._read() and not ready:
                raise StopIteration
        return ready.popleft()

    def close(self) -> None:
        try:
            self._close_iterable()
        finally:
            self._leave()

    def _close_iterable(self) -> None:
        close = getattr(self._iterable, "close", None)
        if close is not None:
            self._context.run(close)

    def _leave(self, *exc: Any) -> None:
        """Leave the request's posthog context, inside the request's own context, once."""
        binding, self._binding = self._binding, None
        if binding is not None:
            self._context.run(binding.__exit__, *(exc or (None, None, None)))

    def __del__(self) -> None:
        # PEP 3333 servers call close(); a test client that drops the body
        # unclosed still leaves the context inside the request's own context,
        # not in whichever one the garbage collector runs in.
        self._leave()


_DISTINCT_ID = "HTTP_X_POSTHOG_DISTINCT_ID"


def _forward(
    proxy: Proxy, environ: WSGIEnvironment, start_response: StartResponse
) -> Iterable[bytes]:
    """Answer a request under the proxy path by forwarding it to PostHog."""
    reply = _proxy_reply(proxy, environ)
    start_response(status_line(reply.status), reply.headers)
    return reply.body


def _proxy_reply(proxy: Proxy, environ: WSGIEnvironment) -> Reply:
    declared = environ.get("CONTENT_LENGTH") or None
    if proxy.too_large(declared):
        return error_reply(413, TOO_LARGE)
    stream = environ["wsgi.input"]
    if declared is not None:
        body = stream.read(int(declared))
    elif environ.get("wsgi.input_terminated"):
        body = stream.read(proxy.max_body + 1)  # a chunked body: its end is marked
    else:
        body = b""  # PEP 3333: without a length, reading could block
    if len(body) > proxy.max_body:
        return error_reply(413, TOO_LARGE)
    headers = [
        (key[5:].replace("_", "-").title(), value)
        for key, value in environ.items()
        if key.startswith("HTTP_")
    ]
    if environ.get("CONTENT_TYPE"):
        headers.append(("Content-Type", environ["CONTENT_TYPE"]))
    url = proxy.upstream(environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""))
    sent = proxy.request_headers(
        headers, environ.get("REMOTE_ADDR", ""), environ.get("HTTP_X_FORWARDED_FOR", "")
    )
    method = environ.get("REQUEST_METHOD", "GET")
    return proxy.forward(method, url, sent, body if body or method != "GET" else None)


def _server_host(environ: WSGIEnvironment) -> str:
    """The host a request without a Host header was served on (PEP 3333's URL reconstruction)."""
    name, port = environ.get("SERVER_NAME", ""), str(environ.get("SERVER_PORT", ""))
    default = "443" if environ.get("wsgi.url_scheme") == "https" else "80"
    return name if not port or port == default else f"{name}:{port}"


def _status_code(status: str) -> int:
    try:
        return int(status.split(" ", 1)[0])
    except ValueError:
        return 0
