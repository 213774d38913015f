"""A bounded HTTP/1.1 load generator (stdlib only), run as its own process.

`concurrency` keep-alive connections, each with one request in flight, driven
by one `selectors` loop over raw sockets: the request bytes are prebuilt and a
response is parsed only as far as its status line, Content-Length and a
``Set-Cookie`` check, so the client costs far less per request than the server
under test. It warms up, then counts responses for `duration` seconds (or
until `requests` responses, whichever comes first), and prints one JSON line.
Every response must be a 200 with the expected marker in its body (or its
absence); anything else is counted as an error, and errors fail the run.

    python bench/load.py --port 8000 --cookie 'ph_identity=...' --expect data-posthog-identity
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import time


class Connection:
    def __init__(self, address: tuple[str, int], request: bytes) -> None:
        self.address = address
        self.request = request
        self.sock = socket.create_connection(address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()

    def send(self) -> None:
        self.sock.sendall(self.request)

    def responses(self) -> list[tuple[bytes, bytes]]:
        """Complete (head, body) pairs now in the buffer."""
        out: list[tuple[bytes, bytes]] = []
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return out
            head = bytes(self.buffer[:end]).lower()
            start = head.find(b"\r\ncontent-length:")
            if start < 0:
                raise RuntimeError("a response without Content-Length")
            stop = head.find(b"\r\n", start + 2)
            length = int(head[start + 17 : stop if stop > 0 else None])
            total = end + 4 + length
            if len(self.buffer) < total:
                return out
            out.append((head, bytes(self.buffer[end + 4 : total])))
            del self.buffer[:total]

    def close(self) -> None:
        self.sock.close()


def run(args: argparse.Namespace) -> dict[str, object]:
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64) bench/1.0\r\n"
        "Accept: text/html,*/*;q=0.8\r\n"
        + (f"Cookie: {args.cookie}\r\n" if args.cookie else "")
        + "\r\n"
    ).encode("latin-1")
    expect = args.expect.encode() if args.expect else None
    refuse = args.refuse.encode() if args.refuse else None
    set_cookie = args.no_set_cookie.lower().encode() if args.no_set_cookie else None
    address = (args.host, args.port)
    selector = selectors.DefaultSelector()
    connections = [Connection(address, request) for _ in range(args.concurrency)]
    for connection in connections:
        selector.register(connection.sock, selectors.EVENT_READ, connection)
        connection.send()

    errors = 0
    first_error = ""
    counted = total = 0
    cpu_start = time.process_time()
    started = time.perf_counter()
    measure_from = started + args.warmup
    deadline = measure_from + args.duration
    measuring = False
    t0 = t1 = measure_from
    while True:
        now = time.perf_counter()
        if not measuring and now >= measure_from:
            measuring, t0, counted = True, now, 0
            cpu_start = time.process_time()
        if measuring and (now >= deadline or counted >= args.requests):
            t1 = now
            break
        for key, _events in selector.select(timeout=1.0):
            ready: Connection = key.data
            data = ready.sock.recv(262144)
            if not data:
                raise RuntimeError("the server closed a keep-alive connection")
            ready.buffer += data
            for head, body in ready.responses():
                counted += 1
                total += 1
                problem = ""
                if not head.startswith(b"http/1.1 200"):
                    problem = head.split(b"\r\n", 1)[0].decode("latin-1")
                elif expect is not None and expect not in body:
                    problem = f"{args.expect!r} missing from the body"
                elif refuse is not None and refuse in body:
                    problem = f"{args.refuse!r} found in the body"
                elif set_cookie is not None and b"\r\nset-cookie: " + set_cookie in head:
                    problem = f"unexpected Set-Cookie {args.no_set_cookie}"
                if problem:
                    errors += 1
                    first_error = first_error or problem
                if b"\r\nconnection: close" in head:
                    raise RuntimeError("the server does not keep connections alive")
            if not ready.buffer:
                ready.send()
    cpu = time.process_time() - cpu_start
    for connection in connections:
        selector.unregister(connection.sock)
        connection.close()
    seconds = t1 - t0
    return {
        "requests": counted,
        "total_requests": total,  # warm-up included
        "seconds": seconds,
        "rps": counted / seconds if seconds > 0 else 0.0,
        "errors": errors,
        "first_error": first_error,
        "client_cpu": cpu / seconds if seconds > 0 else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--cookie", default="")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--requests", type=int, default=10**9, help="stop after this many")
    parser.add_argument("--expect", default="", help="bytes every body must contain")
    parser.add_argument("--refuse", default="", help="bytes no body may contain")
    parser.add_argument("--no-set-cookie", default="", help="a cookie name never to be set")
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(result))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
