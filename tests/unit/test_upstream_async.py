"""The proxy's client under ASGI: requests to PostHog on the event loop, connections kept alive.

Each test runs the client in its own event loop against an upstream on
127.0.0.1: `RecordingUpstream` (a real HTTP/1.1 server that tells which
connection each request came on and which bodies were cut short), or a
scripted one, an asyncio server in the same loop that reads each request with
h11 and answers with the bytes a test gives it (chunked, cut, never, closed).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import h11
import pytest

from posthog_identity.proxy_replies import BodyIncomplete, BodyTooLarge, Reply
from posthog_identity.upstream_async import AsyncUpstream, Streamed
from tests.helpers.servers import free_port
from tests.helpers.upstream import ANSWER, RecordingUpstream, recording_upstream

TIMEOUT = 5.0


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as running:
        yield running


async def body_of(reply: Reply | Streamed) -> bytes:
    assert isinstance(reply, Streamed), f"the proxy answered itself: {reply.status}"
    try:
        return b"".join([chunk async for chunk in reply.body])
    finally:
        await reply.body.aclose()


async def pieces(*chunks: bytes, then: BaseException | None = None) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
        await asyncio.sleep(0)
    if then is not None:
        raise then


# -- a scripted upstream, in the test's own loop -----------------------------------------


Script = Callable[[h11.Request, bytes], bytes | None]


class Scripted:
    """Answers each request with `script(request, body)`'s bytes: None sends nothing
    and holds the connection; a connection is closed after `close_after` answers."""

    def __init__(self, script: Script, close_after: int | None = None) -> None:
        self.script = script
        self.close_after = close_after
        self.connections = 0
        self.requests = 0
        self.closed_by_client = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Scripted:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        http = h11.Connection(h11.SERVER)
        answered = 0
        try:
            while True:
                request: h11.Request | None = None
                body = b""
                while True:
                    event = http.next_event()
                    if event is h11.NEED_DATA:
                        data = await reader.read(65536)
                        if not data:
                            self.closed_by_client.set()
                            return
                        http.receive_data(data)
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                assert request is not None
                self.requests += 1
                answer = self.script(request, body)
                if answer is None:
                    await reader.read()  # held, silent, until the client goes away
                    self.closed_by_client.set()
                    return
                writer.write(answer)
                await writer.drain()
                answered += 1
                if answered == self.close_after:
                    return
                http = h11.Connection(h11.SERVER)
        except ConnectionError:  # the client closed while the answer was still going out
            self.closed_by_client.set()
        finally:
            writer.close()


def answer(body: bytes = b"{}", *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + b"".join(extra)
    return head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 30))


# -- what crosses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "length", "framing"),
    [
        ((b"ab", b"cd"), 4, "content-length"),
        ((b"ab", b"", b"cd"), None, "transfer-encoding"),
    ],
    ids=["declared-length", "chunked"],
)
def test_a_body_is_forwarded_whole_with_its_framing(
    upstream: RecordingUpstream, chunks: tuple[bytes, ...], length: int | None, framing: str
) -> None:
    async def go() -> bytes:
        client = AsyncUpstream(TIMEOUT, 4)
        reply = await client.forward(
            "POST", f"{upstream.url}/e/?v=1", {"X-Kept": "1"}, pieces(*chunks), length
        )
        return await body_of(reply)

    assert run(go()) == ANSWER
    [received] = upstream.received
    assert (received.method, received.target, received.body) == ("POST", "/e/?v=1", b"abcd")
    assert framing in received.headers
    assert received.headers["x-kept"] == "1"
    assert received.headers["host"] == upstream.url.removeprefix("http://")


def test_a_path_and_query_go_out_percent_encoded_where_http_needs_it(
    upstream: RecordingUpstream,
) -> None:
    # The ASGI path is decoded text (utf-8), the query the raw bytes (as latin-1).
    async def go() -> bytes:
        url = f"{upstream.url}/static/a b/\u00e9%41?q=\u00fc x&v=1"
        return await body_of(await AsyncUpstream(TIMEOUT, 4).forward("GET", url, {}, None))

    assert run(go()) == ANSWER
    [received] = upstream.received
    assert received.target == "/static/a%20b/%C3%A9%41?q=%FC%20x&v=1"


def test_a_header_value_beyond_ascii_goes_out_as_its_bytes(upstream: RecordingUpstream) -> None:
    async def go() -> bytes:
        headers = {"X-Name": "caf\u00e9"}  # the byte 0xE9, as the server decoded it
        return await body_of(
            await AsyncUpstream(TIMEOUT, 4).forward("GET", upstream.url, headers, None)
        )

    assert run(go()) == ANSWER
    [received] = upstream.received
    assert received.headers["x-name"] == "caf\u00e9"


@pytest.mark.parametrize(("method", "length"), [("GET", None), ("POST", "0")])
def test_a_request_without_a_body_says_so(
    upstream: RecordingUpstream, method: str, length: str | None
) -> None:
    async def go() -> bytes:
        return await body_of(
            await AsyncUpstream(TIMEOUT, 4).forward(method, upstream.url, {}, None)
        )

    assert run(go()) == ANSWER
    [received] = upstream.received
    assert received.headers.get("content-length") == length
    assert "transfer-encoding" not in received.headers


def test_posthogs_cookies_date_and_server_are_not_returned() -> None:
    def script(request: h11.Request, body: bytes) -> bytes:
        return answer(
            b"{}", b"Set-Cookie: a=1\r\nDate: x\r\nServer: y\r\nCache-Control: max-age=9\r\n"
        )

    async def go() -> list[tuple[str, str]]:
        async with Scripted(script) as scripted:
            reply = await AsyncUpstream(TIMEOUT, 4).forward("GET", scripted.url, {}, None)
            await body_of(reply)
            return reply.headers

    headers = run(go())
    assert ("Cache-Control", "max-age=9") in headers
    assert {name.lower() for name, _ in headers} & {"set-cookie", "date", "server"} == set()


def test_a_chunked_answer_streams_back_chunk_by_chunk_and_its_connection_is_kept() -> None:
    def script(request: h11.Request, body: bytes) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
        )

    async def go() -> tuple[list[bytes], list[tuple[str, str]], int]:
        async with Scripted(script) as scripted:
            client = AsyncUpstream(TIMEOUT, 4)
            reply = await client.forward("GET", f"{scripted.url}/static/array.js", {}, None)
            assert isinstance(reply, Streamed)
            chunks = [chunk async for chunk in reply.body]
            await body_of(await client.forward("GET", scripted.url, {}, None))
            return chunks, reply.headers, scripted.connections

    chunks, headers, connections = run(go())
    assert b"".join(chunks) == b"hello world"
    assert len(chunks) >= 2, "the answer was gathered before it was returned"
    assert "transfer-encoding" not in {name.lower() for name, _ in headers}
    assert connections == 1


# -- connections kept alive, and when not ---------------------------------------------------


def test_two_requests_in_a_row_share_one_connection(upstream: RecordingUpstream) -> None:
    async def go() -> None:
        client = AsyncUpstream(TIMEOUT, 4)
        for target in ("/flags/?v=2", "/e/"):
            await body_of(await client.forward("POST", upstream.url + target, {}, pieces(b"{}")))

    run(go())
    first, second = upstream.received
    assert first.peer == second.peer


@pytest.mark.parametrize(
    ("failure", "status"),
    [(BodyTooLarge(), 413), (BodyIncomplete(), 408)],
    ids=["too-large", "incomplete"],
)
def test_a_body_cut_short_aborts_its_request_and_its_connection_is_not_reused(
    upstream: RecordingUpstream, failure: Exception, status: int
) -> None:
    async def go() -> int:
        client = AsyncUpstream(TIMEOUT, 4)
        await body_of(await client.forward("GET", upstream.url + "/before", {}, None))
        cut = await client.forward(
            "POST", upstream.url + "/s/", {}, pieces(b"x" * 1000, then=failure)
        )
        assert isinstance(cut, Reply)
        await body_of(await client.forward("GET", upstream.url + "/after", {}, None))
        return cut.status

    assert run(go()) == status
    assert upstream.wait_until(lambda: upstream.aborted == ["/s/"])
    before, after = upstream.received
    assert [before.target, after.target] == ["/before", "/after"]
    assert before.peer != after.peer, "a connection whose request was cut went back to the pool"


def test_a_body_shorter_than_its_declared_length_gets_408_and_is_aborted(
    upstream: RecordingUpstream,
) -> None:
    async def go() -> int:
        reply = await AsyncUpstream(TIMEOUT, 4).forward(
            "POST", upstream.url + "/s/", {}, pieces(b"x" * 10), 20
        )
        return reply.status

    assert run(go()) == 408
    assert upstream.wait_until(lambda: upstream.aborted == ["/s/"])
    assert upstream.received == []


def test_an_answer_left_half_read_closes_its_connection() -> None:
    big = b"x" * 300_000

    async def go() -> int:
        async with Scripted(lambda request, body: answer(big)) as scripted:
            client = AsyncUpstream(TIMEOUT, 4)
            reply = await client.forward("GET", scripted.url, {}, None)
            assert isinstance(reply, Streamed)
            await reply.body.__anext__()  # the browser went away after the first piece
            await reply.body.aclose()
            await asyncio.wait_for(scripted.closed_by_client.wait(), TIMEOUT)
            await body_of(await client.forward("GET", scripted.url, {}, None))
            return scripted.connections

    assert run(go()) == 2


def test_an_answer_saying_connection_close_is_not_reused() -> None:
    async def go() -> int:
        script = lambda request, body: answer(b"{}", b"Connection: close\r\n")  # noqa: E731
        async with Scripted(script, close_after=1) as scripted:
            client = AsyncUpstream(TIMEOUT, 4)
            for _ in range(2):
                await body_of(await client.forward("GET", scripted.url, {}, None))
            return scripted.connections

    assert run(go()) == 2


def test_an_idle_connection_posthog_closed_is_not_reused() -> None:
    async def go() -> tuple[int, int]:
        async with Scripted(lambda request, body: answer(), close_after=1) as scripted:
            client = AsyncUpstream(TIMEOUT, 4)
            await body_of(await client.forward("GET", scripted.url, {}, None))
            await asyncio.sleep(0.2)  # PostHog closes the idle connection meanwhile
            reply = await client.forward("GET", scripted.url, {}, None)
            await body_of(reply)
            return reply.status, scripted.connections

    assert run(go()) == (200, 2)


def test_no_more_than_keep_connections_stay_idle(upstream: RecordingUpstream) -> None:
    async def go() -> None:
        client = AsyncUpstream(TIMEOUT, 1)

        async def one(target: str) -> bytes:
            return await body_of(await client.forward("GET", upstream.url + target, {}, None))

        await asyncio.gather(one("/a"), one("/b"))  # two connections at once
        await one("/c")
        await one("/d")

    run(go())
    peers = [received.peer for received in upstream.received]
    assert len(set(peers[:2])) == 2
    assert peers[2] == peers[3]
    assert peers[2] in peers[:2]


def test_the_loops_end_closes_the_idle_connections(upstream: RecordingUpstream) -> None:
    async def go() -> None:
        await body_of(await AsyncUpstream(TIMEOUT, 4).forward("GET", upstream.url, {}, None))

    run(go())  # asyncio.run cancels what is left at its end, the idle connection's watch too
    [received] = upstream.received
    assert upstream.wait_until(lambda: upstream.closed == [received.peer])


# -- PostHog failing ---------------------------------------------------------------------


def test_nothing_listening_gets_502(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> int:
        reply = await AsyncUpstream(TIMEOUT, 4).forward(
            "POST", f"http://127.0.0.1:{free_port()}/e/", {}, pieces(b"{}")
        )
        return reply.status

    with caplog.at_level(logging.WARNING, "posthog_identity"):
        assert run(go()) == 502
    assert "unreachable" in caplog.text


@pytest.mark.parametrize(
    "script",
    [lambda request, body: b"", lambda request, body: b"NOT HTTP\r\n\r\n"],
    ids=["closed-before-answering", "not-http"],
)
def test_posthog_closing_or_garbling_before_its_answer_gets_502(script: Script) -> None:
    async def go() -> int:
        async with Scripted(script, close_after=1) as scripted:
            reply = await AsyncUpstream(TIMEOUT, 4).forward("GET", scripted.url, {}, None)
            return reply.status

    assert run(go()) == 502


def test_posthog_silent_before_its_answer_gets_504(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> int:
        async with Scripted(lambda request, body: None) as scripted:
            reply = await AsyncUpstream(0.3, 4).forward("POST", scripted.url, {}, pieces(b"{}"))
            await asyncio.wait_for(scripted.closed_by_client.wait(), TIMEOUT)
            return reply.status

    with caplog.at_level(logging.WARNING, "posthog_identity"):
        assert run(go()) == 504
    assert "did not answer in time" in caplog.text


def test_posthog_closing_mid_answer_cuts_it_and_logs_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    half = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40

    async def go() -> tuple[int, bytes]:
        async with Scripted(lambda request, body: half, close_after=1) as scripted:
            reply = await AsyncUpstream(TIMEOUT, 4).forward("GET", scripted.url, {}, None)
            return reply.status, await body_of(reply)

    with caplog.at_level(logging.WARNING, "posthog_identity"):
        assert run(go()) == (200, b"x" * 40)
    assert "reading from" in caplog.text


def test_posthog_silent_mid_answer_cuts_it_after_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40

    async def go() -> bytes:
        async with Scripted(lambda request, body: started) as scripted:
            reply = await AsyncUpstream(0.3, 4).forward("GET", scripted.url, {}, None)
            return await body_of(reply)

    with caplog.at_level(logging.WARNING, "posthog_identity"):
        assert run(go()) == b"x" * 40
    assert "too slow; answer cut" in caplog.text


def test_an_answer_trickling_past_the_timeout_in_all_is_cut(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def go() -> bytes:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
                for _ in range(100):  # a byte every 0.05 s: never silent 0.3 s, 5 s in all
                    writer.write(b"x")
                    await writer.drain()
                    await asyncio.sleep(0.05)
            except ConnectionError:
                pass  # the client cut the answer
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            return await body_of(await AsyncUpstream(0.3, 4).forward("GET", url, {}, None))
        finally:
            server.close()

    with caplog.at_level(logging.WARNING, "posthog_identity"):
        cut = run(go())
    assert 0 < len(cut) < 100
    assert "too slow; answer cut" in caplog.text


def test_an_informational_answer_is_skipped_for_the_real_one() -> None:
    async def go() -> bytes:
        script = lambda request, body: b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"real")  # noqa: E731
        async with Scripted(script) as scripted:
            return await body_of(
                await AsyncUpstream(TIMEOUT, 4).forward("GET", scripted.url, {}, None)
            )

    assert run(go()) == b"real"


def test_a_request_cancelled_while_waiting_closes_its_connection() -> None:
    async def go() -> None:
        async with Scripted(lambda request, body: None) as scripted:
            waiting = asyncio.ensure_future(
                AsyncUpstream(TIMEOUT, 4).forward("POST", scripted.url, {}, pieces(b"{}"))
            )
            while not scripted.requests:
                await asyncio.sleep(0.01)
            waiting.cancel()  # the server stops, or the browser went away under hypercorn
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await asyncio.wait_for(scripted.closed_by_client.wait(), TIMEOUT)

    run(go())


# -- https ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate (and its key, in the same file) for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    pem = tmp_path_factory.mktemp("tls") / "upstream.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(pem), "-out", str(pem)),
        ],
        check=True,
        capture_output=True,
    )
    return pem


async def tls_upstream(pem: Path) -> tuple[asyncio.Server, str]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pem)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer(b"over tls"))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    return server, f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def test_an_https_origin_is_reached_over_tls_checked_against_its_name(certificate: Path) -> None:
    async def go() -> bytes:
        server, url = await tls_upstream(certificate)
        try:
            trusted = ssl.create_default_context(cafile=str(certificate))
            return await body_of(
                await AsyncUpstream(TIMEOUT, 4, trusted).forward("GET", url, {}, None)
            )
        finally:
            server.close()

    assert run(go()) == b"over tls"


def test_an_https_origin_with_an_untrusted_certificate_gets_502(certificate: Path) -> None:
    async def go() -> int:
        server, url = await tls_upstream(certificate)
        try:
            return (await AsyncUpstream(TIMEOUT, 4).forward("GET", url, {}, None)).status
        finally:
            server.close()

    assert run(go()) == 502
