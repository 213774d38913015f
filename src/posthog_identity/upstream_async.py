"""PostHog's side of the proxy under ASGI: an HTTP/1.1 client on the event loop itself.

Forwarding runs where the request already is, the event loop, and never blocks
it: asyncio streams carry the bytes and h11 (sans-IO HTTP/1.1, installed with
uvicorn and hypercorn) frames them. No thread per upload in flight, so no
fight with the loop for the GIL and no hop between them per piece of body.

Connections are kept alive per origin (posthog-js sends many small requests:
a TLS handshake each would cost more than the request), at most `keep` idle at
once, and one goes back to the pool only when its request and its answer both
ended cleanly. An idle one is watched: PostHog closing it, or it staying idle
`IDLE_SECONDS`, closes it; so does the loop ending (its tasks are cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from typing import NamedTuple
from urllib.parse import quote, urlsplit

import h11

from .logs import logger
from .proxy_replies import (
    CHUNK,
    INCOMPLETE,
    SILENT,
    TOO_LARGE,
    UNREACHABLE,
    BodyIncomplete,
    BodyTooLarge,
    Reply,
    error_reply,
    origin_of,
    returned,
)

__all__ = ["IDLE_SECONDS", "AsyncUpstream", "Streamed"]

#: Seconds an unused connection stays open: below the idle timeouts of the load
#: balancers in front of PostHog (60 s on AWS's), so it is ours that closes first.
IDLE_SECONDS = 30.0
#: Methods whose request carries a body, so an empty one says ``Content-Length: 0``.
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


class Streamed(NamedTuple):
    """PostHog's answer: status, headers, and its body as it arrives.

    `body` must be closed (``aclose()``) by whoever sends it: closing it before
    its end closes the connection instead of returning it to the pool half read.
    """

    status: int
    headers: list[tuple[str, str]]
    body: AsyncGenerator[bytes, None]


class _Origin(NamedTuple):
    scheme: str
    host: str
    port: int


class _Connection:
    """One kept-alive connection to an origin and its HTTP/1.1 state."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.http = h11.Connection(h11.CLIENT)
        self.watcher: asyncio.Task[None] | None = None
        self.expiry: asyncio.TimerHandle | None = None

    def send(self, event: h11.Event) -> None:
        data = self.http.send(event)
        if data:
            self.writer.write(data)

    def reusable(self) -> bool:
        return (
            self.http.our_state is h11.DONE
            and self.http.their_state is h11.DONE
            and not self.writer.is_closing()
        )

    def close(self) -> None:
        """Close at once, unfinished if need be (PostHog drops a request cut short)."""
        self.writer.close()


class AsyncUpstream:
    """Sends requests to PostHog's origins over kept-alive connections; built once per proxy.

    :param timeout: seconds to connect; of silence while sending or waiting for the
        answer (then 504); and for the answer's body in all (then it is cut).
    :param keep: idle connections kept at most, across origins (the proxy's cap:
        never more in flight than that).
    :param ssl_context: for https origins; the system's trusted CAs by default.
    """

    def __init__(
        self, timeout: float, keep: int, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.timeout = timeout
        self.keep = keep
        self._ssl_context = ssl_context
        # Per event loop: a connection belongs to the loop that opened it.
        self._idle: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[_Origin, list[_Connection]]
        ] = weakref.WeakKeyDictionary()

    async def forward(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: AsyncIterator[bytes] | None,
        length: int | None = None,
    ) -> Reply | Streamed:
        """Send one request to `url`; PostHog's answer streams, or the proxy's own reply.

        `body` is sent as it comes: with `length` (the declared Content-Length) as
        it is, without it chunked. One that raises `BodyTooLarge` or
        `BodyIncomplete` leaves the request unfinished, its connection closed, so
        nothing is ingested; the answer is then 413 or 408.
        """
        parts = urlsplit(url)
        secure = parts.scheme == "https"
        origin = _Origin(parts.scheme, parts.hostname or "", parts.port or (443 if secure else 80))
        target = _wire(parts.path or "/", "utf-8") + (
            f"?{_wire(parts.query, 'latin-1')}" if parts.query else ""
        )
        try:
            connection = await self._connection(origin)
        except (OSError, asyncio.TimeoutError) as error:  # refused, no route, TLS, too slow
            logger.warning("posthog_identity: proxy: %s unreachable (%r)", origin_of(url), error)
            return error_reply(502, UNREACHABLE)
        if length is not None:
            framing = [("Content-Length", str(length))]
        elif body is not None:
            framing = [("Transfer-Encoding", "chunked")]
        else:
            framing = [("Content-Length", "0")] if method in _WITH_BODY else []
        # Header values are latin-1 text from the server: back to their bytes.
        head = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in [("Host", parts.netloc), *headers.items(), *framing]
        ]
        try:
            connection.send(h11.Request(method=method, target=target, headers=head))
            if body is not None:
                async for chunk in body:
                    if chunk:
                        connection.send(h11.Data(data=chunk))
                        await asyncio.wait_for(connection.writer.drain(), self.timeout)
            connection.send(h11.EndOfMessage())
            await asyncio.wait_for(connection.writer.drain(), self.timeout)
            response = await self._head(connection)
        except BodyTooLarge:
            connection.close()
            return error_reply(413, TOO_LARGE)
        except (BodyIncomplete, h11.LocalProtocolError):  # shorter than its length, or gone
            connection.close()
            return error_reply(408, INCOMPLETE)
        except asyncio.TimeoutError:
            connection.close()
            logger.warning("posthog_identity: proxy: %s did not answer in time", origin_of(url))
            return error_reply(504, SILENT)
        except (OSError, h11.RemoteProtocolError) as error:
            connection.close()
            logger.warning("posthog_identity: proxy: %s unreachable (%r)", origin_of(url), error)
            return error_reply(502, UNREACHABLE)
        except BaseException:  # cancelled: the browser went away, the server stops
            connection.close()
            raise
        headers_back = [
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers.raw_items()
        ]
        return Streamed(
            response.status_code, returned(headers_back), self._body(connection, origin, url)
        )

    async def _head(self, connection: _Connection) -> h11.Response:
        """The answer's status line and headers, each wait bounded by the timeout."""
        while True:
            event = connection.http.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(connection.reader.read(CHUNK), self.timeout)
                connection.http.receive_data(data)
            elif isinstance(event, h11.Response):
                return event
            elif not isinstance(event, h11.InformationalResponse):  # 1xx: the real one follows
                # h11 raises first on a connection closed or garbled before the answer
                raise h11.RemoteProtocolError(f"{event!r} before an answer")  # pragma: no cover

    async def _body(
        self, connection: _Connection, origin: _Origin, url: str
    ) -> AsyncGenerator[bytes, None]:
        """The answer's body as it arrives; cut short (logged) past the timeout or on error."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        complete = False
        try:
            while True:
                event = connection.http.next_event()
                if event is h11.NEED_DATA:
                    left = min(self.timeout, deadline - loop.time())
                    if left <= 0:
                        raise asyncio.TimeoutError
                    data = await asyncio.wait_for(connection.reader.read(CHUNK), left)
                    connection.http.receive_data(data)
                elif isinstance(event, h11.Data):
                    yield bytes(event.data)
                else:  # h11 raises on a body cut or garbled, so this is its end
                    complete = isinstance(event, h11.EndOfMessage)
                    return
        except asyncio.TimeoutError:
            logger.warning("posthog_identity: proxy: %s too slow; answer cut", origin_of(url))
        except (OSError, h11.RemoteProtocolError) as error:
            logger.warning(
                "posthog_identity: proxy: reading from %s failed (%r)", origin_of(url), error
            )
        finally:
            if complete and connection.reusable():
                self._keep(connection, origin, loop)
            else:
                connection.close()

    async def _connection(self, origin: _Origin) -> _Connection:
        """An idle connection to `origin` still open, or a new one."""
        loop = asyncio.get_running_loop()
        idle = self._idle.setdefault(loop, {}).get(origin, [])
        while idle:
            connection = idle.pop()
            try:
                await self._wake(connection)
            except BaseException:  # cancelled meanwhile: nobody else holds it
                connection.close()
                raise
            if not (connection.reader.at_eof() or connection.writer.is_closing()):
                return connection
            connection.close()
        context = None
        if origin.scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            context = self._ssl_context
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                origin.host,
                origin.port,
                ssl=context,
                server_hostname=origin.host if context else None,
            ),
            self.timeout,
        )
        return _Connection(reader, writer)

    def _keep(
        self, connection: _Connection, origin: _Origin, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Back to the pool, watched while idle; or closed when `keep` are idle already."""
        pools = self._idle.setdefault(loop, {})
        if sum(len(idle) for idle in pools.values()) >= self.keep:
            connection.close()
            return
        connection.http.start_next_cycle()
        idle = pools.setdefault(origin, [])
        idle.append(connection)
        watcher = loop.create_task(_watch(connection, idle))
        connection.watcher = watcher
        connection.expiry = loop.call_later(IDLE_SECONDS, watcher.cancel)

    @staticmethod
    async def _wake(connection: _Connection) -> None:
        """Take an idle connection from its watcher, which is done with it on return."""
        assert connection.watcher is not None
        assert connection.expiry is not None
        connection.expiry.cancel()
        watcher, connection.watcher = connection.watcher, None
        watcher.cancel()
        await asyncio.wait({watcher})


#: What a request target may hold as it is (RFC 9112: visible ASCII); the rest is
#: percent-encoded, as urllib3 does for WSGI (a decoded path may hold a space).
_TARGET_SAFE = "".join(chr(code) for code in range(0x21, 0x7F))


def _wire(text: str, encoding: str) -> str:
    """`text` as a request target carries it: invalid characters percent-encoded
    from their bytes in `encoding` (utf-8 for a decoded path, latin-1 for a raw query)."""
    return quote(text, safe=_TARGET_SAFE, encoding=encoding)


async def _watch(connection: _Connection, idle: list[_Connection]) -> None:
    """Wait on an idle connection; PostHog closing it, saying anything unasked, an
    error, its expiry or the loop's end (both cancel this) close it. Not when it
    is taken for a request (`_wake` clears `watcher` first)."""
    task = asyncio.current_task()
    try:
        with contextlib.suppress(OSError):
            await connection.reader.read(1)
    finally:
        if connection.watcher is task:
            with contextlib.suppress(ValueError):
                idle.remove(connection)
            connection.close()
