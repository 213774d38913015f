"""The first-party proxy: posthog-js's requests forwarded to PostHog through the site.

An upstream on 127.0.0.1 records what reached it and answers as told, so each
test checks the bytes that crossed, through both adapters in process (the
WSGI one driven by werkzeug's test client, the ASGI one by httpx).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from werkzeug.test import Client

from posthog_identity import Settings
from posthog_identity.asgi import IdentityMiddleware as ASGIMiddleware
from posthog_identity.wsgi import IdentityMiddleware as WSGIMiddleware
from tests.helpers.project import API_KEY, SECRET
from tests.helpers.servers import free_port
from tests.helpers.upstream import ANSWER, RecordingUpstream, recording_upstream

# -- an upstream that records what it received ------------------------------------


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]  #: names lower-cased
    body: bytes


@dataclass
class Upstream:
    """PostHog as the proxy sees it: records requests; `mode` says how it answers."""

    url: str
    received: list[Received] = field(default_factory=list)
    mode: str = "echo"  # echo | silent | big
    release: threading.Event = field(default_factory=threading.Event)


BIG = bytes(range(256)) * 2048  # 512 KiB, a posthog-js sized answer


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    state = Upstream("")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.received.append(
                Received(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
            )
            if state.mode == "silent":
                state.release.wait(30)
                return
            payload = BIG if state.mode == "big" else json.dumps({"status": 1}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Set-Cookie", "upstream=1; Path=/")
            self.send_header("Cache-Control", "public, max-age=60")
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_OPTIONS = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    state.release.set()
    server.shutdown()
    server.server_close()


def proxy_settings(host: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "secrets": (SECRET,),
        "api_key": API_KEY,
        "host": host,
        "proxy_path": "/ingest",
        **overrides,
    }
    return Settings(**values)


def the_app_answered(environ_or_scope: Any, *rest: Any) -> Any:
    raise AssertionError("a proxied request reached the app")


# -- the two adapters, driven in process -------------------------------------------


@dataclass
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes


def wsgi_app(settings: Settings) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"].startswith("/ingest"):
            the_app_answered(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"app"]

    return WSGIMiddleware(app, settings)


def asgi_app(settings: Settings) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"].startswith("/ingest"):
            the_app_answered(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})

    return ASGIMiddleware(app, settings)


def send(adapter: str, settings: Settings, method: str, url: str, **options: Any) -> Answer:
    headers = options.pop("headers", {})
    body = options.pop("body", b"")
    if adapter == "wsgi":
        reply = Client(wsgi_app(settings)).open(
            url, method=method, headers=headers, data=body, environ_base={"REMOTE_ADDR": "1.2.3.4"}
        )
        data = reply.get_data()
        reply.close()
        return Answer(reply.status_code, httpx.Headers(list(reply.headers.items())), data)

    async def call() -> Answer:
        transport = httpx.ASGITransport(app=asgi_app(settings), client=("1.2.3.4", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.example") as http:
            reply = await http.request(method, url, headers=headers, content=body)
            return Answer(reply.status_code, reply.headers, reply.content)

    return asyncio.run(call())


ADAPTERS = ["wsgi", "asgi"]


# -- what crosses --------------------------------------------------------------------


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_gzip_event_batch_is_forwarded_byte_for_byte(adapter: str, upstream: Upstream) -> None:
    batch = gzip.compress(json.dumps([{"event": "$pageview", "properties": {}}]).encode())
    answer = send(
        adapter,
        proxy_settings(upstream.url),
        "POST",
        "/ingest/e/?compression=gzip-js&ver=1.449.2&_=1733245670123",
        headers={"Content-Type": "text/plain"},
        body=batch,
    )
    assert answer.status == 200
    [received] = upstream.received
    assert (received.method, received.target) == (
        "POST",
        "/e/?compression=gzip-js&ver=1.449.2&_=1733245670123",
    )
    assert received.body == batch
    assert received.headers["content-type"] == "text/plain"


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_path_with_an_encoded_space_is_forwarded_encoded(
    adapter: str, upstream: Upstream
) -> None:
    answer = send(adapter, proxy_settings(upstream.url), "GET", "/ingest/static/a%20b.js?x=%20")
    assert answer.status == 200
    [received] = upstream.received
    assert received.target == "/static/a%20b.js?x=%20"


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_the_apps_cookies_and_credentials_never_leave(adapter: str, upstream: Upstream) -> None:
    send(
        adapter,
        proxy_settings(upstream.url),
        "POST",
        "/ingest/e/",
        headers={
            "Cookie": "sessionid=secret; ph_identity=x",
            "Authorization": "Bearer secret",
            "X-Custom": "kept",
        },
        body=b"{}",
    )
    [received] = upstream.received
    assert "cookie" not in received.headers
    assert "authorization" not in received.headers
    assert received.headers["x-custom"] == "kept"
    assert received.headers["host"] == upstream.url.removeprefix("http://")


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(
    ("trusted", "expected"),
    [(0, "1.2.3.4"), (1, "203.0.113.9")],
    ids=["peer", "one-trusted-proxy"],
)
def test_x_forwarded_for_carries_the_client(
    adapter: str, upstream: Upstream, trusted: int, expected: str
) -> None:
    settings = proxy_settings(upstream.url, trusted_proxies=trusted)
    send(adapter, settings, "GET", "/ingest/flags/", headers={"X-Forwarded-For": "203.0.113.9"})
    [received] = upstream.received
    assert received.headers["x-forwarded-for"] == expected


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_the_answer_comes_back_without_upstream_cookies(adapter: str, upstream: Upstream) -> None:
    answer = send(adapter, proxy_settings(upstream.url), "GET", "/ingest/array/phc/config.js")
    assert answer.status == 200
    assert answer.body == b'{"status": 1}'
    assert "set-cookie" not in answer.headers, "neither PostHog's nor ours"
    assert answer.headers["cache-control"] == "public, max-age=60"


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_posthog_js_sized_answer_streams_back_whole(adapter: str, upstream: Upstream) -> None:
    upstream.mode = "big"
    answer = send(adapter, proxy_settings(upstream.url), "GET", "/ingest/static/array.js")
    assert answer.body == BIG
    assert answer.headers["content-length"] == str(len(BIG))


# -- bounds ---------------------------------------------------------------------------


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_body_over_the_bound_gets_413_and_nothing_is_forwarded(
    adapter: str, upstream: Upstream
) -> None:
    settings = proxy_settings(upstream.url, proxy_max_body=1000)
    answer = send(adapter, settings, "POST", "/ingest/e/", body=b"x" * 1001)
    assert answer.status == 413
    assert upstream.received == []


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_nothing_listening_upstream_gets_502(adapter: str) -> None:
    settings = proxy_settings(f"http://127.0.0.1:{free_port()}")
    assert send(adapter, settings, "POST", "/ingest/e/", body=b"{}").status == 502


def test_wsgi_a_silent_upstream_gets_504_and_holds_the_worker_no_longer(
    upstream: Upstream,
) -> None:
    upstream.mode = "silent"
    settings = proxy_settings(upstream.url, proxy_timeout=0.5)
    started = time.monotonic()
    answer = send("wsgi", settings, "POST", "/ingest/e/", body=b"{}")
    assert answer.status == 504
    assert time.monotonic() - started < 5, "the worker was held past the timeout"


def test_asgi_a_silent_upstream_gets_504_while_the_app_keeps_serving(
    upstream: Upstream,
) -> None:
    upstream.mode = "silent"
    app = asgi_app(proxy_settings(upstream.url, proxy_timeout=1.5))
    finished: list[str] = []

    async def call(http: httpx.AsyncClient, path: str, name: str) -> int:
        reply = await http.post(path, content=b"{}")
        finished.append(name)
        return reply.status_code

    async def both() -> tuple[int, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.example") as http:
            hanging = asyncio.create_task(call(http, "/ingest/e/", "proxied"))
            await asyncio.sleep(0.2)  # the proxied request is waiting upstream by now
            served = await call(http, "/page", "app")
            return await hanging, served

    proxied, served = asyncio.run(both())
    assert (proxied, served) == (504, 200)
    assert finished == ["app", "proxied"], "the app's request waited on PostHog"


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_proxied_requests_carry_no_identity_cookie(adapter: str, upstream: Upstream) -> None:
    answer = send(adapter, proxy_settings(upstream.url), "GET", "/ingest/flags/")
    assert "ph_identity" not in answer.headers.get("set-cookie", "")


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_without_the_proxy_the_path_belongs_to_the_app(adapter: str, upstream: Upstream) -> None:
    settings = replace(proxy_settings(upstream.url), proxy_path=None)
    with pytest.raises(AssertionError, match="reached the app"):
        send(adapter, settings, "GET", "/ingest/flags/")


# -- bodies that end early, and places held and freed (in process) -------------------------


@pytest.fixture
def recording() -> Iterator[RecordingUpstream]:
    with recording_upstream() as running:
        yield running


def asgi_post(
    app: Any, messages: list[dict[str, Any]], length: int | str, pause: float = 0.0
) -> list[dict[str, Any]]:
    """POST to `app` as a server would, the body as `messages`, each `pause` seconds
    after the last; then the browser waits for ever (a stalled upload). Returns what
    the app sent within 20 s."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/ingest/s/",
        "raw_path": b"/ingest/s/",
        "query_string": b"",
        "headers": [(b"host", b"shop.example"), (b"content-length", str(length).encode("latin-1"))],
        "client": ("1.2.3.4", 5555),
        "server": ("shop.example", 80),
    }
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        pending = list(messages)

        async def receive() -> dict[str, Any]:
            if pending:
                await asyncio.sleep(pause)
                return pending.pop(0)
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await asyncio.wait_for(app(scope, receive, send), 20)

    with contextlib.suppress(asyncio.TimeoutError):
        asyncio.run(run())
    return sent


@pytest.mark.parametrize(
    ("ending", "timeout"),
    [([{"type": "http.disconnect"}], 10.0), ([], 0.5)],
    ids=["browser-gone", "browser-silent"],
)
def test_asgi_a_body_that_stops_early_gets_408_and_the_upstream_request_is_aborted(
    recording: RecordingUpstream, ending: list[dict[str, Any]], timeout: float
) -> None:
    app = asgi_app(proxy_settings(recording.url, proxy_timeout=timeout))
    first = {"type": "http.request", "body": b"x" * 500, "more_body": True}
    sent = asgi_post(app, [first, *ending], length=1000)
    assert sent[0]["status"] == 408
    assert recording.wait_until(lambda: recording.aborted == ["/s/"])
    assert recording.received == []


def wsgi_environ(body: io.RawIOBase | io.BufferedIOBase, **extra: Any) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/ingest/s/",
        "QUERY_STRING": "",
        "SERVER_NAME": "shop.example",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "1.2.3.4",
        "wsgi.input": body,
        "wsgi.url_scheme": "http",
        **extra,
    }


def call_wsgi(app: Any, environ: dict[str, Any]) -> tuple[str, Any]:
    statuses: list[str] = []
    iterable = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    return statuses[0], iterable


class BrokenInput(io.RawIOBase):
    """A request body whose connection breaks after its first read."""

    def __init__(self) -> None:
        self.reads = 0

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self.reads > 1:
            raise ConnectionResetError("the browser went away")
        return b"x" * min(size, 100)


@pytest.mark.parametrize(
    "body",
    [io.BytesIO(b"x" * 500), BrokenInput()],
    ids=["shorter-than-its-length", "connection-broken"],
)
def test_wsgi_a_body_that_stops_early_gets_408_and_nothing_is_recorded(
    recording: RecordingUpstream, body: io.IOBase
) -> None:
    app = wsgi_app(proxy_settings(recording.url))
    status, iterable = call_wsgi(app, wsgi_environ(body, CONTENT_LENGTH="1000"))
    b"".join(iterable)
    iterable.close()
    assert status.startswith("408")
    assert recording.received == []


@pytest.mark.parametrize("server_key", ["gunicorn.socket", "werkzeug.socket"])
def test_wsgi_an_upload_that_falls_silent_on_the_servers_socket_gets_408_after_the_timeout(
    recording: RecordingUpstream, server_key: str
) -> None:
    # gunicorn and werkzeug hand the app the browser's socket, blocking with no timeout.
    app = wsgi_app(proxy_settings(recording.url, proxy_timeout=0.5))
    browser, server_side = socket.socketpair()
    with browser, server_side, server_side.makefile("rb") as stream:
        browser.sendall(b"x" * 500)  # of 1000 declared; then the browser falls silent
        environ = wsgi_environ(stream, CONTENT_LENGTH="1000", **{server_key: server_side})
        answered: list[str] = []
        worker = threading.Thread(target=lambda: answered.append(call_wsgi(app, environ)[0]))
        worker.start()
        worker.join(10)  # a bound to tell "blocked" from "answered", not a speed check
        blocked = worker.is_alive()
        browser.close()  # a worker still waiting reads the end of the body and returns
        worker.join()
        assert not blocked, "the worker waited for the silent browser past the timeout"
        assert answered[0].startswith("408")
        assert server_side.gettimeout() is None, "the server's socket kept the proxy's timeout"
    assert recording.wait_until(lambda: recording.aborted == ["/s/"])
    assert recording.received == []


def test_wsgi_a_chunked_body_crossing_the_bound_gets_413_and_nothing_is_recorded(
    recording: RecordingUpstream,
) -> None:
    app = wsgi_app(proxy_settings(recording.url, proxy_max_body=100 * 1024))
    environ = wsgi_environ(
        io.BytesIO(b"x" * 200 * 1024),
        HTTP_TRANSFER_ENCODING="chunked",
        **{"wsgi.input_terminated": True},
    )
    status, iterable = call_wsgi(app, environ)
    iterable.close()
    assert status.startswith("413")
    assert recording.wait_until(lambda: recording.aborted == ["/s/"])
    assert recording.received == []


def test_wsgi_a_place_is_held_until_the_answer_is_closed(recording: RecordingUpstream) -> None:
    app = wsgi_app(proxy_settings(recording.url, proxy_concurrency=1))

    def post() -> tuple[str, Any]:
        return call_wsgi(app, wsgi_environ(io.BytesIO(b"{}"), CONTENT_LENGTH="2"))

    status, held = post()
    assert status.startswith("200")
    refused, iterable = post()
    iterable.close()
    assert refused.startswith("503")
    held.close()  # never iterated, as when the browser goes away before the answer
    again, iterable = post()
    assert again.startswith("200")
    assert b"".join(iterable) == b'{"status": 1}'
    iterable.close()


def test_wsgi_a_place_is_freed_when_the_server_fails_to_start_the_answer(
    recording: RecordingUpstream,
) -> None:
    app = wsgi_app(proxy_settings(recording.url, proxy_concurrency=1))

    def broken_start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        raise OSError("the browser went away")

    environ = wsgi_environ(io.BytesIO(b"{}"), CONTENT_LENGTH="2")
    with pytest.raises(OSError, match="went away"):
        app(environ, broken_start_response)
    status, iterable = call_wsgi(app, wsgi_environ(io.BytesIO(b"{}"), CONTENT_LENGTH="2"))
    iterable.close()
    assert status.startswith("200")


@pytest.mark.parametrize(
    "declared", ["\xb2", "1e3", "-1", "+5"], ids=["superscript-two", "exponent", "negative", "plus"]
)
def test_a_declared_length_that_is_no_length_gets_413_and_nothing_is_forwarded(
    declared: str, recording: RecordingUpstream
) -> None:
    # Header bytes reach the app as latin-1 text: "\xb2" is a digit to str.isdigit()
    # and no number to int(). Both adapters answer before reading the body.
    settings = proxy_settings(recording.url)
    status, iterable = call_wsgi(
        wsgi_app(settings), wsgi_environ(io.BytesIO(b"x"), CONTENT_LENGTH=declared)
    )
    iterable.close()
    sent = asgi_post(asgi_app(settings), [{"type": "http.request", "body": b"x"}], declared)
    assert (status[:3], sent[0]["status"]) == ("413", 413)
    assert recording.received == []


class SlowInput(io.RawIOBase):
    """A request body of `pieces` pieces of 100 bytes, `pause` seconds apart (a slow uplink)."""

    def __init__(self, pieces: int, pause: float) -> None:
        self.left = pieces
        self.pause = pause

    def read(self, size: int = -1) -> bytes:
        if not self.left:
            return b""
        self.left -= 1
        time.sleep(self.pause)
        return b"x" * 100


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_an_upload_slower_than_the_timeout_still_gets_its_whole_answer(
    adapter: str, recording: RecordingUpstream
) -> None:
    # Each piece comes within the timeout, the whole upload takes longer: the
    # answer's own time starts when it does, so it is not cut before it begins.
    settings = proxy_settings(recording.url, proxy_timeout=0.5)
    if adapter == "wsgi":
        environ = wsgi_environ(SlowInput(4, 0.25), CONTENT_LENGTH="400")
        status, iterable = call_wsgi(wsgi_app(settings), environ)
        answer = b"".join(iterable)
        iterable.close()
    else:
        piece = {"type": "http.request", "body": b"x" * 100, "more_body": True}
        messages = [piece, piece, piece, {**piece, "more_body": False}]
        sent = asgi_post(asgi_app(settings), messages, length=400, pause=0.25)
        status = str(sent[0]["status"])
        answer = b"".join(message.get("body", b"") for message in sent[1:])
    assert status.startswith("200")
    assert answer == ANSWER
    [received] = recording.received
    assert received.body == b"x" * 400


def test_asgi_forwarding_runs_on_the_event_loop_and_starts_no_thread() -> None:
    threads: dict[str, set[threading.Thread]] = {}

    async def go() -> int:
        head_seen = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            head_seen.set()
            await reader.readexactly(
                int(head.lower().split(b"content-length: ")[1].split(b"\r")[0])
            )
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        app = asgi_app(proxy_settings(url))
        pieces = [b"ab", b"cd"]

        async def receive() -> dict[str, Any]:
            if len(pieces) == 1:  # the upstream has the request's head, not all its body
                await asyncio.wait_for(head_seen.wait(), 10)
                threads["during"] = set(threading.enumerate())
            return {"type": "http.request", "body": pieces.pop(0), "more_body": bool(pieces)}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/ingest/e/",
            "raw_path": b"/ingest/e/",
            "query_string": b"",
            "headers": [(b"content-length", b"4")],
        }
        threads["before"] = set(threading.enumerate())
        await app(scope, receive, send)
        server.close()
        return int(sent[0]["status"])

    assert asyncio.run(go()) == 200
    assert threads["during"] - threads["before"] == set()
