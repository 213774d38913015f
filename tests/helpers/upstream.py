"""PostHog as the proxy sees it, on 127.0.0.1: every request recorded byte for byte.

`RecordingUpstream` reads each body as it arrives (with a length or chunked) and
answers a complete request with 200 and a small JSON body, carrying its own
`Date` and `Server` headers as PostHog's answers do. A request whose body ends
early (the proxy aborted it) is never recorded, only counted in `aborted`, as a
real ingestion host would drop it. Connections are kept alive: each request
names the proxy's port it came from (`peer`), and `closed` lists the ports
whose connection ended. `first_bytes` is set when any body byte
arrives (and `started` names each request whose body began), so a test can
hold back the rest of its body until the upstream has seen the start.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWER = json.dumps({"status": 1}).encode()
#: What the upstream says it is: the proxy's answers must not repeat it.
UPSTREAM_SERVER = "recording-upstream"


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]  #: names lower-cased
    body: bytes
    peer: int = 0  #: the proxy's port: two requests with the same came on one connection


@dataclass
class RecordingUpstream:
    url: str = ""
    received: list[Received] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)  #: targets whose body ended early
    first_bytes: threading.Event = field(default_factory=threading.Event)
    started: list[str] = field(default_factory=list)  #: targets whose body began to arrive
    closed: list[int] = field(default_factory=list)  #: peers whose connection was closed

    def reset(self) -> None:
        self.received.clear()
        self.aborted.clear()
        self.first_bytes.clear()
        self.started.clear()
        self.closed.clear()

    def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


class _Truncated(Exception):
    """The body ended before its length or its last chunk."""


def _handler(state: RecordingUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = UPSTREAM_SERVER

        def _exactly(self, size: int) -> bytes:
            parts: list[bytes] = []
            while size:
                piece = self.rfile.read1(min(size, 65536))
                if not piece:
                    raise _Truncated
                if not self._began:
                    self._began = True
                    state.started.append(self.path)
                    state.first_bytes.set()
                parts.append(piece)
                size -= len(piece)
            return b"".join(parts)

        def _chunked(self) -> bytes:
            parts: list[bytes] = []
            while True:
                line = self.rfile.readline(1024)
                if not line.endswith(b"\r\n"):
                    raise _Truncated
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self._exactly(size))
                if self.rfile.readline(3) != b"\r\n":
                    raise _Truncated

        def _answer(self) -> None:
            self._began = False
            try:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    body = self._chunked()
                else:
                    body = self._exactly(int(self.headers.get("Content-Length") or 0))
            except (_Truncated, ValueError, OSError):
                state.aborted.append(self.path)
                self.close_connection = True
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            state.received.append(
                Received(self.command, self.path, headers, body, self.client_address[1])
            )
            self.send_response(200)  # with Date and Server, as PostHog's answers
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(ANSWER)))
            self.end_headers()
            self.wfile.write(ANSWER)

        do_GET = do_POST = do_OPTIONS = _answer

        def handle(self) -> None:
            super().handle()  # every request of the connection, until it closes
            state.closed.append(self.client_address[1])

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def recording_upstream() -> Iterator[RecordingUpstream]:
    """A `RecordingUpstream` serving on a free port of 127.0.0.1 until the block ends."""
    state = RecordingUpstream()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="recording-upstream", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
