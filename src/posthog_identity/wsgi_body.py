"""The WSGI response side: the head held while an HTML page's start is scanned, and the
body iterated inside the request's own context."""

from __future__ import annotations

import contextvars
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .context import settle
from .errors import capture_unhandled
from .identity import NOTHING
from .logs import logger

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .context import bind
    from .exchange import Exchange
    from .identity import Report
    from .response import BodyRewrite

__all__ = ["Body", "Head", "run"]


class Head:
    """One response's head: identity headers, held while an HTML page's start is scanned."""

    __slots__ = (
        "environ",
        "exchange",
        "held",
        "pending",
        "reread",
        "rewrite",
        "server",
        "write_body",
    )

    def __init__(
        self,
        exchange: Exchange,
        server: StartResponse,
        reread: Callable[[WSGIEnvironment], Report],
        environ: WSGIEnvironment,
    ) -> None:
        """`reread(environ)` asks the user source again when the app starts its response."""
        self.exchange = exchange
        self.server = server
        self.reread = reread
        self.environ = environ
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
                report = self.reread(self.environ)
                if report is not NOTHING:  # reporting nothing changes nothing
                    settle(exchange, report)
            except Exception:
                logger.exception("posthog_identity: re-reading the user failed")
        if self.pending:
            content_type = None
            for name, value in headers:
                if name.lower() == "content-type":
                    content_type = value  # the last one counts, as for `respond`
            if exchange.leaves_alone(content_type):
                # The common case: nothing to add, no body to rewrite; the head goes out as is.
                self.rewrite = self.held = None
                self.pending = False
                self.write_body = self.server(status, headers, exc_info)
                return self.write
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

    def rewrite_all(self, chunks: list[bytes]) -> list[bytes]:
        """A whole body in hand through the held head's rewrite; the head goes out."""
        rewrite = self.rewrite
        assert rewrite is not None
        pieces: list[bytes] = []
        for index, chunk in enumerate(chunks):
            pieces += rewrite.feed(chunk)
            if not rewrite.holding:
                pieces += chunks[index + 1 :]  # decided: the rest passes through
                break
        else:
            pieces += rewrite.finish()
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


def run(
    app: WSGIApplication, environ: WSGIEnvironment, head: Head, binding: bind
) -> Iterable[bytes]:
    """Call the app in a private context bound to the request; return what the
    server is to iterate: the app's own list when nothing of the app's is left to
    run, else a `Body` that iterates and closes the app's iterable in that context.

    The body is read until the head has gone to the server: some servers
    (granian) read status and headers as soon as the application returns, so
    the look-ahead is spent inside the call.
    """
    context = contextvars.copy_context()
    context.run(binding.__enter__)
    try:
        iterable = context.run(app, environ, head.start_response)
    except BaseException as error:
        context.run(capture_unhandled, error, _SOURCE)
        context.run(binding.__exit__, type(error), error, error.__traceback__)
        raise
    if not head.pending and type(iterable) is list:
        # The head is out and the body is a plain list: iterating it runs none
        # of the app's code, and it has no close(). The request's context can
        # end now, and the server reads the list itself.
        context.run(binding.__exit__, None, None, None)
        return iterable
    if head.rewrite is not None and head.held is not None and type(iterable) is list:
        # An HTML page as a plain list: the whole body is in hand, so it goes
        # through the rewrite at once, with no `Body` around it. It goes out as an
        # iterator, not a list: a server sizes a list itself (granian sets a
        # Content-Length on one, wsgiref on a single chunk), and the page's head
        # must stay as the app and the rewrite made it.
        try:
            pieces = head.rewrite_all(iterable)
        except BaseException as error:
            context.run(capture_unhandled, error, _SOURCE)
            context.run(binding.__exit__, type(error), error, error.__traceback__)
            raise
        context.run(binding.__exit__, None, None, None)
        return iter(pieces)
    return Body(head, context, binding, iterable).read_ahead()


class Body:
    """The app's iterable, iterated and closed inside the request's context (`run`)."""

    def __init__(
        self,
        head: Head,
        context: contextvars.Context,
        binding: bind,
        iterable: Iterable[bytes],
    ) -> None:
        self._head = head
        self._context = context
        self._binding: bind | None = binding
        self._iterable = iterable
        self._iterator: Iterator[bytes] = iter(())
        self._ready: deque[bytes] = deque()  # pieces read ahead, or split around the snippet

    def read_ahead(self) -> Body:
        """Read the app's body until the head has gone to the server."""
        head = self._head
        try:
            self._iterator = self._context.run(iter, self._iterable)
            while head.pending and self._read():
                pass
        except BaseException as error:
            self._context.run(capture_unhandled, error, _SOURCE)
            # The server never sees this iterable, so it is closed here.
            try:
                self._close_iterable()
            finally:
                self._leave(type(error), error, error.__traceback__)
            raise
        return self

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
            try:
                more = self._read()
            except Exception as error:
                self._context.run(capture_unhandled, error, _SOURCE)
                raise
            if not more and not ready:
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


#: `$exception_source` of an error that left the app through the WSGI middleware.
_SOURCE = "wsgi.middleware"


def _status_code(status: str) -> int:
    try:
        return int(status.split(" ", 1)[0])
    except ValueError:
        return 0
