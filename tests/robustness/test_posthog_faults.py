"""PostHog faults: a failing ingestion host never holds up, breaks or bloats the app.

The faulty hosts live on 127.0.0.1 only (no test traffic leaves the machine):
one accepts connections and never answers, one answers 500, one 429, one
closes every connection at once, and one is a refused port (bound, then
closed). The app sends with posthog's real client configured as the library
builds it by default (`Client(api_key, host=host)`: 15 s request timeout,
3 retries with backoff), so a request that waited on PostHog would take
seconds, and one that did not takes milliseconds.

Latency is compared with a healthy baseline (the same client and requests
against a local `Sink`) measured in the same test: the bound is generous (p95
within a second of the baseline's) and tells "waited on PostHog" from "did
not"; it is not a speed target.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from queue import Empty
from typing import Any

import httpx
import posthog
import pytest

from posthog_identity.client import FLUSH_TIMEOUT
from posthog_identity.settings import Settings
from posthog_identity.testing import Sink
from tests.helpers.drivers import Driver, driver_for, make_site
from tests.helpers.faults import FaultyHost
from tests.helpers.project import API_KEY, ROOT, SECRET
from tests.helpers.servers import NoCookies, Running, start_concurrency_site, stop_process
from tests.sites import basic as apps
from tests.sites.concurrency import CLIENT_VARIABLE

FAULTS = ["hang", "500", "429", "close", "refused"]
#: Requests measured per run (half page views, half logins: captures and links).
REQUESTS = 300
#: "Did not wait on PostHog": within this much of the healthy baseline.
P95_SLACK = 1.0
MAX_SLACK = 2.0
#: Shutdown gives up on undeliverable events after FLUSH_TIMEOUT; this much more is allowed.
SHUTDOWN_SLACK = 2.0
#: A server process also runs posthog's own exit flush (1 s) and its own teardown.
PROCESS_EXIT_SLACK = 4.0
#: How long the module's clients may take to stop once the faulty hosts are gone.
DISPOSE_TIMEOUT = 45.0


# ---------------------------------------------------------------------------
# Faulty ingestion hosts


def default_client(host: str, **options: Any) -> posthog.Client:
    """posthog's client as `Engine` builds it when none is given."""
    return posthog.Client(API_KEY, host=host, **options)


def _drain(client: posthog.Client) -> None:
    """Drop what is still queued: it can never be delivered."""
    while True:
        try:
            client.queue.get_nowait()
        except Empty:
            return
        client.queue.task_done()


@dataclass
class Faults:
    hosts: dict[str, FaultyHost]
    clients: list[posthog.Client]

    def client(self, fault: str, **options: Any) -> posthog.Client:
        client = default_client(self.hosts[fault].url, **options)
        self.clients.append(client)
        return client


def _posthog_back(host: FaultyHost, stack: ExitStack) -> None:
    """Close `host` and serve a `Sink` on its port for as long as `stack` is open.

    A client's batch stuck on the host then goes through at its next retry (1-4 s
    of backoff away), rather than failing its last retries (7 s) before the client stops.
    """
    host.close()
    with suppress(OSError):  # the port was taken meanwhile: the host stays down
        stack.enter_context(Sink(port=int(host.url.rsplit(":", 1)[1])))


@pytest.fixture(scope="module")
def faults() -> Iterator[Faults]:
    """The faulty hosts, and the clients sending to them, stopped together at the end.

    A client stuck on a faulty host stops once its in-flight batch is done with;
    PostHog comes back on each host's port for that, and stopping them all at
    once costs the wait once.
    """
    hosts = {fault: FaultyHost(fault) for fault in FAULTS}
    found = Faults(hosts, [])
    try:
        yield found
    finally:
        for client in found.clients:
            _drain(client)
        with ExitStack() as back:
            for host in hosts.values():
                _posthog_back(host, back)
            stoppers = [threading.Thread(target=c.shutdown, daemon=True) for c in found.clients]
            for stopper in stoppers:
                stopper.start()
            deadline = time.monotonic() + DISPOSE_TIMEOUT
            for stopper in stoppers:
                stopper.join(max(0.0, deadline - time.monotonic()))
        assert not any(s.is_alive() for s in stoppers), "a posthog client did not stop"


@pytest.fixture
def quiet_posthog(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """posthog logs every failed upload and dropped event; the library's errors stay visible.

    Disabled rather than levelled: each posthog client resets its logger's level.
    """
    caplog.set_level(logging.WARNING, logger="posthog_identity")
    noisy = logging.getLogger("posthog")
    noisy.disabled = True
    try:
        yield caplog
    finally:
        noisy.disabled = False


# ---------------------------------------------------------------------------
# Measuring


@dataclass
class Latencies:
    seconds: list[float]

    @property
    def p95(self) -> float:
        return statistics.quantiles(self.seconds, n=20)[-1]

    @property
    def max(self) -> float:
        return max(self.seconds)

    def __str__(self) -> str:
        slowest = self.seconds.index(self.max)
        return f"p95 {self.p95 * 1000:.1f} ms, max {self.max * 1000:.1f} ms (#{slowest})"


def run_visitors(site: Callable[[], Driver], requests: int = REQUESTS) -> Latencies:
    """Fresh visitors each view a page and log in: captures, cookies and links."""
    timings = []
    for n in range(requests // 2):
        driver = site()
        for url, status in (("/", 200), (f"/login?user=fault-{uuid.uuid4()}", 302)):
            started = time.perf_counter()
            reply = driver.get(url)
            timings.append(time.perf_counter() - started)
            assert reply.status == status, (n, url, reply)
        assert driver.state.linked
    return Latencies(timings)


def _no_library_errors(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.name == "posthog_identity" and r.levelno >= 30]
    assert errors == [], [r.getMessage() for r in errors]


@pytest.mark.parametrize("adapter", ["wsgi", "asgi"])
@pytest.mark.parametrize("fault", FAULTS)
def test_a_failing_posthog_holds_up_no_response(
    faults: Faults,
    sink: Sink,
    settings: Settings,
    adapter: str,
    fault: str,
    quiet_posthog: pytest.LogCaptureFixture,
) -> None:
    healthy = default_client(sink.url)
    try:
        baseline = run_visitors(lambda: driver_for(adapter, make_site(adapter, settings, healthy)))
    finally:
        healthy.shutdown()
    host = faults.hosts[fault]
    client = faults.client(fault)
    faulty = replace(settings, host=host.url)
    before = host.connections

    measured = run_visitors(lambda: driver_for(adapter, make_site(adapter, faulty, client)))

    print(f"\nfault {fault} {adapter}: baseline {baseline}; under fault {measured}")
    assert measured.p95 < baseline.p95 + P95_SLACK
    assert measured.max < baseline.max + MAX_SLACK
    if fault != "refused":
        assert host.reached(since=before), "the client never reached the faulty host"
    _no_library_errors(quiet_posthog)


# ---------------------------------------------------------------------------
# Memory while events back up

QUEUE_SIZE = 100
#: Enough for a stuck batch (flush_at: 100 events) and a full queue behind it.
WARMUP = 250
BACKLOG = 1000
#: Growth allowed while BACKLOG more events are dropped; keeping them queued would
#: take about 1.1 MB (about 1.1 KB each, measured with an unbounded queue).
MEMORY_GROWTH = 256 * 1024


def measure_backlog(adapter: str) -> dict[str, int]:
    """Run in a fresh interpreter: no other client's retries in the measured memory.

    Fresh visitors keep viewing a page while PostHog hangs; returns the client's
    largest queue and how much traced memory grew over the last BACKLOG requests.
    """
    logging.getLogger("posthog").disabled = True
    host = FaultyHost("hang")
    client = default_client(host.url, max_queue_size=QUEUE_SIZE)
    try:
        config = Settings(secrets=(SECRET,), api_key=API_KEY, host=host.url)
        app = make_site(adapter, config, client)
        sizes = []

        def visit(count: int) -> None:
            for _ in range(count):
                assert driver_for(adapter, app).get("/").status == 200
                sizes.append(client.queue.qsize())

        visit(WARMUP)
        # The consumer has taken its batch and is stuck sending it: the backlog is set.
        assert host.reached(since=0, timeout=10.0)
        # Traced from here on (tracing slows every allocation): what the backlog
        # allocates and keeps. Tracing from the start would also subtract what the
        # warm-up allocated and the backlog freed, so this is the stricter count.
        tracemalloc.start()
        warm = tracemalloc.get_traced_memory()[0]
        visit(BACKLOG)
        grown = tracemalloc.get_traced_memory()[0] - warm
        tracemalloc.stop()
        return {"queue_max": max(sizes), "grown": grown}
    finally:
        with ExitStack() as back:
            _posthog_back(host, back)
            client.shutdown()


@pytest.mark.parametrize("adapter", ["wsgi", "asgi"])
def test_events_backing_up_stay_within_the_clients_queue_bound(adapter: str) -> None:
    code = (
        "import json; from tests.robustness.test_posthog_faults import measure_backlog; "
        f"print(json.dumps(measure_backlog({adapter!r})))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    found = json.loads(done.stdout.decode().splitlines()[-1])

    print(
        f"\nbacklog {adapter}: queue max {found['queue_max']}/{QUEUE_SIZE}, "
        f"grew {found['grown']} bytes over {BACKLOG} requests"
    )
    assert found["queue_max"] == QUEUE_SIZE, "the events did not back up"
    assert found["grown"] < MEMORY_GROWTH


# ---------------------------------------------------------------------------
# Shutdown


def test_asgi_lifespan_shutdown_gives_up_on_a_hanging_posthog_in_time(
    faults: Faults, settings: Settings, quiet_posthog: pytest.LogCaptureFixture
) -> None:
    from posthog_identity.asgi import IdentityMiddleware

    client = faults.client("hang")
    app = IdentityMiddleware(
        apps.make_asgi_app(client),
        replace(settings, host=faults.hosts["hang"].url),
        user_id=apps.asgi_user,
        client=client,
    )
    run_visitors(lambda: driver_for("asgi", app), requests=200)
    assert client.queue.unfinished_tasks > 0, "nothing left to deliver"

    async def lifespan() -> float:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        task = asyncio.create_task(app({"type": "lifespan"}, inbox.get, sent.put))
        await inbox.put({"type": "lifespan.startup"})
        assert (await sent.get())["type"] == "lifespan.startup.complete"
        started = time.monotonic()
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await sent.get())["type"] == "lifespan.shutdown.complete"
        elapsed = time.monotonic() - started
        await task
        return elapsed

    elapsed = asyncio.run(lifespan())

    print(f"\nlifespan shutdown with PostHog hanging: {elapsed:.2f} s")
    assert elapsed < FLUSH_TIMEOUT + SHUTDOWN_SLACK
    _no_library_errors(quiet_posthog)


def test_wsgi_flush_gives_up_on_a_hanging_posthog_in_time(
    faults: Faults, settings: Settings, quiet_posthog: pytest.LogCaptureFixture
) -> None:
    client = faults.client("hang")
    app = make_site("wsgi", replace(settings, host=faults.hosts["hang"].url), client)
    run_visitors(lambda: driver_for("wsgi", app), requests=200)
    assert client.queue.unfinished_tasks > 0, "nothing left to deliver"

    started = time.monotonic()
    app.engine.flush()
    elapsed = time.monotonic() - started

    print(f"\nengine.flush() with PostHog hanging: {elapsed:.2f} s")
    assert elapsed < FLUSH_TIMEOUT + SHUTDOWN_SLACK
    _no_library_errors(quiet_posthog)


# ---------------------------------------------------------------------------
# A real server, with the client the library builds itself


def _measure_over_http(url: str, requests: int) -> Latencies:
    timings = []
    with httpx.Client(base_url=url, timeout=30.0, cookies=NoCookies()) as http:
        for n in range(requests // 2):
            started = time.perf_counter()
            first = http.get("/page", params={"marker": f"m{n}"})
            timings.append(time.perf_counter() - started)
            assert first.status_code == 200
            cookie = first.headers["set-cookie"].split(";", 1)[0]
            started = time.perf_counter()
            login = http.get(
                "/login",
                params={"marker": f"l{n}", "user": f"fault-{uuid.uuid4()}"},
                headers={"Cookie": cookie},
            )
            timings.append(time.perf_counter() - started)
            assert login.status_code == 200
    return Latencies(timings)


def _exit_seconds(process: Any) -> float:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=FLUSH_TIMEOUT + 30)
    finally:
        killed = stop_process(process)
    assert not killed
    return time.monotonic() - started


def _start_both(kind: str, healthy: str, faulty: str, tmp_path: Path) -> tuple[Running, Running]:
    """`kind` serving with the client the library builds, sending to `healthy`, and
    another sending to `faulty`; started at once (a start mostly waits on imports),
    measured one at a time while the other idles."""
    engine_client = {CLIENT_VARIABLE: "engine"}
    with ThreadPoolExecutor(2) as pool:
        starts = []
        for name, host in (("healthy", healthy), ("faulty", faulty)):
            (tmp_path / name).mkdir()
            starts.append(
                pool.submit(start_concurrency_site, kind, host, tmp_path / name, **engine_client)
            )
    failures = [start.exception() for start in starts if start.exception() is not None]
    started = [start.result() for start in starts if start.exception() is None]
    if failures:
        for running in started:
            stop_process(running.process)
        raise failures[0]
    return started[0], started[1]


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
def test_a_real_server_waits_on_a_hanging_posthog_neither_per_request_nor_at_exit(
    faults: Faults, sink: Sink, kind: str, tmp_path: Path
) -> None:
    host = faults.hosts["hang"]
    before = host.connections
    healthy, faulty = _start_both(kind, sink.url, host.url, tmp_path)
    try:
        baseline = _measure_over_http(healthy.url, REQUESTS)
        measured = _measure_over_http(faulty.url, REQUESTS)
        # The server's client sends a batch per 100 events (or 5 s): it is stuck by now.
        reached = host.reached(since=before, timeout=10.0)
    finally:
        exit_seconds = _exit_seconds(faulty.process)
        stop_process(healthy.process)

    print(
        f"\n{kind} with PostHog hanging: baseline {baseline}; under fault {measured}; "
        f"exit after SIGTERM {exit_seconds:.2f} s"
    )
    assert reached, "the server never reached the faulty host"
    assert measured.p95 < baseline.p95 + P95_SLACK
    assert measured.max < baseline.max + MAX_SLACK
    assert exit_seconds < FLUSH_TIMEOUT + PROCESS_EXIT_SLACK
    # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
    assert faulty.process.returncode in (0, -signal.SIGTERM), faulty.output()
    assert "Traceback" not in faulty.output(), faulty.output()
