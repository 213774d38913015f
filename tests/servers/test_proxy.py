"""The first-party proxy under real servers, to a recording upstream.

Each server runs `tests.sites.proxy` with ``POSTHOG_IDENTITY_PROXY_PATH=/ingest``,
forwarding to a `RecordingUpstream` on 127.0.0.1: the ASGI app under uvicorn,
hypercorn and granian, the WSGI one under gunicorn and waitress; all start at
the same time. Requests go out through `http.client`, which sends paths as written (``..``
and ``%2F`` included) and lets a test send a body piece by piece.
"""

from __future__ import annotations

import http.client
import signal
import socket
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import partial

import pytest

from tests.helpers.servers import (
    Started,
    app_command,
    check_stopped,
    server_environment,
    start_process,
    stop_process,
)
from tests.helpers.upstream import UPSTREAM_SERVER, RecordingUpstream, recording_upstream

SITE = "tests.sites.proxy"
KINDS = ["uvicorn", "hypercorn", "granian", "gunicorn", "waitress"]
#: The servers that hand the app a body as it arrives (waitress buffers it whole first).
STREAMING = ["uvicorn", "hypercorn", "granian", "gunicorn"]
TIMEOUT = 10.0
#: The servers' proxy timeout: short, so an upload that falls silent ends soon.
PROXY_TIMEOUT = 4
MAX_BODY = 256 * 1024
#: Two places: a test can hold both, and one finishing never delays the next test.
CONCURRENCY = 2
KiB = 1024


def command(kind: str, port: int) -> list[str]:
    if kind == "waitress":
        listen = f"--listen=127.0.0.1:{port}"
        return [sys.executable, "-m", "waitress", listen, "--call", f"{SITE}:wsgi_factory"]
    if kind == "hypercorn":  # --workers 0: serve in this very process
        bind = f"127.0.0.1:{port}"
        return [
            sys.executable,
            "-m",
            "hypercorn",
            f"{SITE}:asgi_factory()",
            "--bind",
            bind,
            "--workers",
            "0",
        ]
    if kind == "granian":  # its ASGI interface: gunicorn and waitress cover WSGI here
        return [
            *(sys.executable, "-m", "granian", "--interface", "asgi", "--factory"),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
            f"{SITE}:asgi_factory",
        ]
    return app_command(kind, port, SITE)


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as running:
        yield running


def stop_signal(kind: str) -> signal.Signals:
    """waitress handles no SIGTERM: Ctrl-C's SIGINT stops it gracefully."""
    return signal.SIGINT if kind == "waitress" else signal.SIGTERM


@pytest.fixture(scope="module")
def servers(
    upstream: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[Started]]]:
    """The servers, started at the same time; a failed start fails its own
    tests. Stopped together at the module's end, then checked."""
    env = server_environment(upstream.url)
    env["POSTHOG_IDENTITY_PROXY_PATH"] = "/ingest"
    env["POSTHOG_IDENTITY_PROXY_MAX_BODY"] = str(MAX_BODY)
    env["POSTHOG_IDENTITY_PROXY_CONCURRENCY"] = str(CONCURRENCY)
    env["POSTHOG_IDENTITY_PROXY_TIMEOUT"] = str(PROXY_TIMEOUT)
    directories = {kind: tmp_path_factory.mktemp(f"proxy-{kind}") for kind in KINDS}

    def start(kind: str) -> Started:
        return start_process(
            kind, partial(command, kind), env, directories[kind], how=stop_signal(kind)
        )

    def stop(kind: str) -> bool:
        return stop_process(running[kind].process, stop_signal(kind))

    running: dict[str, Started] = {}
    with ThreadPoolExecutor(len(KINDS)) as pool:
        starting = {kind: pool.submit(start, kind) for kind in KINDS}
        wait(starting.values())
        try:
            yield starting
        finally:
            running = {k: f.result() for k, f in starting.items() if f.exception() is None}
            killed = dict(zip(running, pool.map(stop, running), strict=True))
    for kind, started in running.items():
        check_stopped(kind, started.log, killed[kind], how=stop_signal(kind))


@pytest.fixture(scope="module", params=KINDS)
def server(request: pytest.FixtureRequest, servers: dict[str, Future[Started]]) -> Started:
    return servers[str(request.param)].result()


@pytest.fixture(autouse=True)
def _fresh(upstream: RecordingUpstream) -> None:
    upstream.reset()


def connect(server: Started) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)


def request(
    server: Started, method: str, target: str, body: bytes | None = None
) -> http.client.HTTPResponse:
    connection = connect(server)
    connection.request(method, target, body=body, headers={"Content-Type": "text/plain"})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


class Upload:
    """A POST sent by hand: its head at once, its body piece by piece, then its answer."""

    def __init__(self, server: Started, target: str, *, length: int | None = None) -> None:
        framing = (
            f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
        )
        self.chunked = length is None
        self.socket = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        self.socket.sendall(
            f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
            f"{framing}\r\n\r\n".encode()
        )

    def send(self, data: bytes) -> None:
        self.socket.sendall(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)

    def end(self) -> None:
        if self.chunked:
            self.socket.sendall(b"0\r\n\r\n")

    def answer(self) -> http.client.HTTPResponse:
        response = http.client.HTTPResponse(self.socket)
        response.begin()
        response.read()
        self.socket.close()
        return response


def body(size: int) -> bytes:
    return bytes(range(256)) * (size // 256)


# -- what comes back ------------------------------------------------------------------


def test_a_proxied_answer_carries_one_date_and_the_app_servers_server(
    server: Started, upstream: RecordingUpstream
) -> None:
    response = request(server, "GET", "/ingest/flags/?v=2")
    assert response.status == 200
    assert len(response.headers.get_all("Date") or []) == 1
    [server_header] = response.headers.get_all("Server") or []
    assert UPSTREAM_SERVER not in server_header


# -- which paths are forwarded --------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/ingest/static/../../etc/passwd",
        "/ingest/./e/",
        "/ingest/e/..",
        "/ingest/%2e%2e/x",
        "/ingest/%2E%2E/x",
        "/ingest/.%2e/x",
        "/ingest/%252e%252e/x",
        "/ingest/static/a%2fb",
        "/ingest/static/a%2Fb",
    ],
    ids=[
        "dot-dot",
        "dot",
        "trailing-dot-dot",
        "encoded-dot-dot",
        "encoded-upper",
        "half-encoded",
        "double-encoded",
        "encoded-slash",
        "encoded-slash-upper",
    ],
)
def test_a_path_with_dot_segments_or_an_encoded_slash_gets_400_and_is_not_forwarded(
    server: Started, upstream: RecordingUpstream, target: str
) -> None:
    response = request(server, "GET", target)
    assert response.status == 400
    assert upstream.received == []


def test_posthog_pythons_v1_capture_path_is_forwarded_like_any_other(
    server: Started, upstream: RecordingUpstream
) -> None:
    batch = b'{"batch":[{"event":"$pageview","distinct_id":"d"}]}'
    response = request(server, "POST", "/ingest/i/v1/analytics/events?x=1", batch)
    assert response.status == 200
    [received] = upstream.received
    assert (received.method, received.target, received.body) == (
        "POST",
        "/i/v1/analytics/events?x=1",
        batch,
    )


# -- bounds: the body streams, its bound holds, requests in flight are capped ----------------


@pytest.mark.parametrize("server", STREAMING, indirect=True)
@pytest.mark.parametrize("length", [200 * KiB, None], ids=["length", "chunked"])
def test_the_body_reaches_the_upstream_before_the_browser_has_sent_all_of_it(
    server: Started, upstream: RecordingUpstream, length: int | None
) -> None:
    data = body(200 * KiB)
    upload = Upload(server, "/ingest/s/?compression=gzip-js", length=length)
    upload.send(data[: 128 * KiB])
    assert upstream.first_bytes.wait(TIMEOUT), "the proxy waited for the whole body"
    upload.send(data[128 * KiB :])
    upload.end()
    assert upload.answer().status == 200
    [received] = upstream.received
    assert received.body == data


@pytest.mark.parametrize("server", STREAMING, indirect=True)
def test_a_declared_length_over_the_bound_gets_413_before_the_body_is_sent(
    server: Started, upstream: RecordingUpstream
) -> None:
    upload = Upload(server, "/ingest/s/", length=MAX_BODY + 1)
    assert upload.answer().status == 413
    assert upstream.received == []
    assert not upstream.first_bytes.is_set()


@pytest.mark.parametrize("server", STREAMING, indirect=True)
def test_a_chunked_body_crossing_the_bound_gets_413_and_its_upstream_request_is_aborted(
    server: Started, upstream: RecordingUpstream
) -> None:
    upload = Upload(server, "/ingest/s/")
    upload.send(body(128 * KiB))
    assert upstream.first_bytes.wait(TIMEOUT), "nothing was forwarded before the bound"
    upload.send(body(192 * KiB))  # 320 KiB in all, over the 256 KiB bound
    upload.end()
    assert upload.answer().status == 413
    assert upstream.wait_until(lambda: upstream.aborted == ["/s/"]), "upstream not aborted"
    assert upstream.received == [], "the upstream took a body over the bound"


@pytest.mark.parametrize("server", STREAMING, indirect=True)
def test_beyond_the_cap_a_request_gets_503_with_retry_after_before_its_body_is_sent(
    server: Started, upstream: RecordingUpstream
) -> None:
    data = body(200 * KiB)
    holding = []
    for _ in range(CONCURRENCY):
        upload = Upload(server, "/ingest/s/", length=len(data))
        upload.send(data[: 128 * KiB])
        holding.append(upload)
    assert upstream.wait_until(lambda: len(upstream.started) == CONCURRENCY)
    beyond = Upload(server, "/ingest/e/", length=1000)  # its body is never sent
    refused = beyond.answer()
    assert refused.status == 503
    assert refused.headers["Retry-After"].isdigit()
    for upload in holding:
        upload.send(data[128 * KiB :])
        assert upload.answer().status == 200
    assert [r.target for r in upstream.received] == ["/s/"] * CONCURRENCY


@pytest.mark.parametrize("server", STREAMING, indirect=True)
def test_an_upload_that_falls_silent_gets_408_after_the_proxy_timeout_and_is_aborted_upstream(
    server: Started, upstream: RecordingUpstream
) -> None:
    # gunicorn's socket blocks without a timeout of its own: without the proxy's
    # bound, the worker thread would wait for as long as the browser stays connected.
    upload = Upload(server, "/ingest/s/", length=200 * KiB)
    upload.send(body(64 * KiB))
    assert upstream.first_bytes.wait(TIMEOUT), "nothing was forwarded"
    assert upload.answer().status == 408  # within PROXY_TIMEOUT; the socket gives up at TIMEOUT
    assert upstream.wait_until(lambda: upstream.aborted == ["/s/"]), "upstream not aborted"
    assert upstream.received == []
