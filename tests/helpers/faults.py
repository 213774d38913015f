"""PostHog failing: `FaultyHost` on 127.0.0.1 hangs, answers 500 or 429, closes every
connection, or is a port nobody listens on (the outage, resend and fault tests share it);
`BrokenClient` is posthog's real client with an alias and a flush that raise.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from typing import Any

import posthog


class FaultyHost:
    """A PostHog ingestion host on 127.0.0.1 that fails in one way.

    ``hang`` accepts and never reads nor answers; ``500`` and ``429`` read the
    request and answer that status; ``close`` closes each connection unread;
    ``refused`` is a port nobody listens on. `connections` counts what arrived.
    """

    def __init__(self, fault: str) -> None:
        self.fault = fault
        self.connections = 0
        self._held: list[socket.socket] = []
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        if fault == "refused":
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
        else:
            self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
            self._listener.settimeout(0.05)
            port = self._listener.getsockname()[1]
            self._thread = threading.Thread(target=self._serve, name=f"faulty-{fault}", daemon=True)
            self._thread.start()
        self.url = f"http://127.0.0.1:{port}"

    def _serve(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            if self.fault == "hang":
                self._held.append(connection)
                continue
            with connection:
                if self.fault in ("500", "429"):
                    self._answer(connection, int(self.fault))

    @staticmethod
    def _answer(connection: socket.socket, status: int) -> None:
        connection.settimeout(5.0)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            declared = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            length = int(declared.group(1)) if declared else 0
            while len(body) < length:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                body += chunk
            reply = json.dumps({"type": "server_error", "code": "fault", "detail": "fault"})
            extra = "Retry-After: 1\r\n" if status == 429 else ""
            connection.sendall(
                (
                    f"HTTP/1.1 {status} Fault\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(reply)}\r\n{extra}Connection: close\r\n\r\n{reply}"
                ).encode()
            )
        except OSError:
            pass

    def reached(self, since: int, timeout: float = 5.0) -> bool:
        """Whether a connection arrived after the count was `since` (it may still be in
        the listen backlog, not yet accepted)."""
        deadline = time.monotonic() + timeout
        while self.connections == since and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.connections > since

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        if self._listener is not None:
            self._listener.close()
        for connection in self._held:
            connection.close()


class BrokenClient(posthog.Client):
    """A real client whose alias and flush fail, as a misbehaving transport would."""

    def alias(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionResetError("peer reset")

    def flush(self, *args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")
