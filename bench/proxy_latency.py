"""The first-party proxy's added latency: one event POST sent through it vs sent directly.

A real sink stands in for PostHog; the app is a WSGI app wrapped by the
middleware with POSTHOG_IDENTITY_PROXY_PATH, served by werkzeug's threaded
server on 127.0.0.1. One keep-alive client sends the same gzip batch
alternately to the sink's `/e/` and to the app's `/ingest/e/`, so both see the
same machine at the same moment; the difference of the percentiles is what
the proxy adds.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import urllib3
from werkzeug.serving import WSGIRequestHandler, make_server

from common import API_KEY, SECRET
from posthog_identity.settings import Settings
from posthog_identity.testing import Sink
from posthog_identity.wsgi import IdentityMiddleware

BATCH = gzip.compress(
    json.dumps(
        [{"event": "$pageview", "properties": {"token": API_KEY, "distinct_id": "bench"}}]
    ).encode()
)
QUERY = "?compression=gzip-js&ver=1.449.2"


@dataclass
class Latency:
    requests: int
    direct_ms: dict[str, float]
    proxied_ms: dict[str, float]

    def added(self, quantile: str) -> float:
        return self.proxied_ms[quantile] - self.direct_ms[quantile]


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not the proxy"]


@contextmanager
def _serving(sink: Sink) -> Iterator[str]:
    settings = Settings(secrets=(SECRET,), api_key=API_KEY, host=sink.url, proxy_path="/ingest")
    server = make_server(
        "127.0.0.1", 0, IdentityMiddleware(_app, settings), threaded=True, request_handler=_Quiet
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def _quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50": at(0.50), "p95": at(0.95)}


def measure(requests: int, warmup: int = 20) -> Latency:
    """`requests` POSTs each way, interleaved, after `warmup` of each."""
    with Sink() as sink, _serving(sink) as site:
        http = urllib3.PoolManager(maxsize=2)
        headers = {"Content-Type": "text/plain"}
        targets = {"direct": f"{sink.url}/e/{QUERY}", "proxied": f"{site}/ingest/e/{QUERY}"}
        times: dict[str, list[float]] = {"direct": [], "proxied": []}
        for index in range(warmup + requests):
            for name, url in targets.items():
                started = time.perf_counter()
                reply = http.request("POST", url, body=BATCH, headers=headers)
                elapsed = time.perf_counter() - started
                if reply.status != 200:
                    raise RuntimeError(f"{name} POST answered {reply.status}: {reply.data!r}")
                if index >= warmup:
                    times[name].append(elapsed)
        arrived = len(sink.events())
        if arrived != 2 * (warmup + requests):
            raise RuntimeError(f"the sink received {arrived} events, not {2 * (warmup + requests)}")
    return Latency(requests, _quantiles(times["direct"]), _quantiles(times["proxied"]))
