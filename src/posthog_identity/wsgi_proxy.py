"""The first-party proxy over WSGI: the request body streamed up, PostHog's answer streamed out."""

from __future__ import annotations

import socket
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .proxy import WSGI_CONCURRENCY
from .proxy_replies import (
    BAD_PATH,
    CHUNK,
    TOO_LARGE,
    BodyIncomplete,
    busy_reply,
    error_reply,
    limited,
    status_line,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from .proxy import Proxy
    from .proxy_replies import Reply

__all__ = ["forward"]


def forward(
    proxy: Proxy, environ: WSGIEnvironment, start_response: StartResponse
) -> Iterable[bytes]:
    """Answer a request under the proxy path by forwarding it to PostHog.

    Refusals (a bad path, a declared length over the bound, the cap reached)
    are answered before the body is read. An admitted request keeps its place
    until the server closes the answer.
    """
    refusal = _refusal(proxy, environ)
    if refusal is not None:
        start_response(status_line(refusal.status), refusal.headers)
        return refusal.body
    try:
        reply = _forwarded(proxy, environ)
        start_response(status_line(reply.status), reply.headers)
    except BaseException:
        proxy.release()
        raise
    return _Releasing(reply.body, proxy.release)


def _refusal(proxy: Proxy, environ: WSGIEnvironment) -> Reply | None:
    # The path as sent, where the server tells it (gunicorn, waitress): %2F survives there.
    raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    raw_path = raw_uri.partition("?")[0] if raw_uri else None
    if proxy.refuses(environ.get("PATH_INFO", ""), raw_path):
        return error_reply(400, BAD_PATH)
    if proxy.too_large(environ.get("CONTENT_LENGTH") or None):
        return error_reply(413, TOO_LARGE)
    if not proxy.admit(WSGI_CONCURRENCY):
        return busy_reply()
    return None


def _forwarded(proxy: Proxy, environ: WSGIEnvironment) -> Reply:
    declared = environ.get("CONTENT_LENGTH") or None
    length = int(declared) if declared is not None else None
    stream = environ["wsgi.input"]
    body: Iterator[bytes] | None = None
    if length:
        body = _read(stream, length, _connection(environ), proxy.timeout)
    elif (
        environ.get("wsgi.input_terminated")
        and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    ):
        # A chunked body whose end the server marks; without that mark, PEP 3333
        # forbids reading past a length there is none of.
        body = limited(_read(stream, None, _connection(environ), proxy.timeout), proxy.max_body)
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
    return proxy.forward(method, url, sent, body, length or None)


def _connection(environ: WSGIEnvironment) -> socket.socket | None:
    """The browser's socket, where the server hands it to the app (gunicorn, werkzeug)."""
    for key in ("gunicorn.socket", "werkzeug.socket"):
        connection = environ.get(key)
        if isinstance(connection, socket.socket):
            return connection
    return None


def _read(
    stream: Any, length: int | None, connection: socket.socket | None, timeout: float
) -> Iterator[bytes]:
    """`length` bytes of `stream` (or all, to its end) in chunks of at most CHUNK.

    gunicorn's and werkzeug's sockets block without a timeout, so a browser that
    stops sending mid-upload would hold the worker thread for as long as it keeps
    the connection open: while the body is read, a silence longer than the
    proxy's timeout ends it (`BodyIncomplete`, answered 408).
    """
    if connection is not None and connection.gettimeout() is not None:
        connection = None  # the server bounds its reads itself
    if connection is not None:
        connection.settimeout(timeout)
    left = length
    try:
        while left is None or left > 0:
            try:
                chunk = stream.read(CHUNK if left is None else min(CHUNK, left))
            except OSError as error:  # the browser went away (gunicorn: NoMoreData) or fell silent
                raise BodyIncomplete from error
            if not chunk:
                if left is not None:
                    raise BodyIncomplete
                return
            if left is not None:
                left -= len(chunk)
            yield chunk
    finally:
        if connection is not None:
            connection.settimeout(None)


class _Releasing:
    """The answer's body; its place is freed once it is read to its end or closed
    (PEP 3333: the server always closes it), whichever comes first."""

    def __init__(self, body: Generator[bytes, None, None], release: Callable[[], None]) -> None:
        self._body = body
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> Iterator[bytes]:
        yield from self._body
        self._done()

    def close(self) -> None:
        try:
            self._body.close()
        finally:
            self._done()

    def _done(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()
