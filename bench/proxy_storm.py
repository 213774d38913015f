"""The first-party proxy under a storm of uploads: memory, answers, and the app's own latency.

`UPLOADS` concurrent 1 MiB POSTs to ``/ingest/s/`` (session replay's size) hit
one server process (uvicorn, or gunicorn with gthreads) whose proxy forwards to
a fast upstream on 127.0.0.1 that reads each body and answers 200. The storm
comes in `WAVES` waves, `WAVE_PAUSE` seconds apart: with the cap refusing most
uploads at once, one wave is over in about a second, too short to sample the
app's latency more than a few times. Meanwhile `PROBERS` probers (threads of
one process, a connection each) ask the app's own ``/healthz`` every
`PROBE_EVERY` seconds, before the storm (idle) and during it; only the samples
taken during a wave count as the storm's. Reported per server: the server's
peak RSS growth over its warmed-up RSS (VmHWM reset after warm-up), the
answers of all waves (200 / 503 / anything else, errors included) and the
app's median and p95 latency idle and during the waves. Bounded: every connection times out
after `REQUEST_TIMEOUT`, the storm after `STORM_TIMEOUT`; only 127.0.0.1.

Every process (upstream, prober, server) is separate, so the storm's client
shares neither memory nor a GIL with what is measured. The server reads its
settings from the environment only, so the same run measures any revision of
the library (``PYTHONPATH=<its src>``).

    python bench/proxy_storm.py upstream          # the upstream, prints its port
    python bench/proxy_storm.py probe URL         # the prober: until stdin closes
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
MiB = 1024 * 1024
UPLOADS = 1000
UPLOAD_SIZE = MiB
SLICE = 64 * 1024
REQUEST_TIMEOUT = 120.0
STORM_TIMEOUT = 300.0
READY_TIMEOUT = 30.0
IDLE_SECONDS = 3.0
PROBE_EVERY = 0.05
PROBERS = 4
#: Waves of `UPLOADS` (a smoke run's 20 uploads: one wave), and the pause between two.
WAVES = 5
WAVE_PAUSE = 1.0
SERVER_CONFIG = {
    "uvicorn": "1 worker, h11, asyncio",
    "gunicorn": "1 worker, gthread, 8 threads",
}
#: What the bench gives each server beyond its defaults: under gunicorn the cap sits
#: below the 8 threads, as docs/proxy.md advises (revisions without the setting ignore it).
SERVER_ENV = {"uvicorn": {}, "gunicorn": {"POSTHOG_IDENTITY_PROXY_CONCURRENCY": "4"}}
ANSWER = b'{"status": 1}'


# --------------------------------------------------------------------- the app served


def _settings() -> Any:
    from posthog_identity.settings import Settings

    return Settings.from_env()


def asgi_factory() -> Any:
    """For uvicorn: the app answers ``/healthz``; the middleware, ``/ingest``."""
    from posthog.client import Client

    from posthog_identity.asgi import IdentityMiddleware

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    settings = _settings()
    return IdentityMiddleware(app, settings, client=Client(settings.api_key, send=False))


def wsgi_factory() -> Any:
    """For gunicorn, as `asgi_factory`."""
    from posthog.client import Client

    from posthog_identity.wsgi import IdentityMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    settings = _settings()
    return IdentityMiddleware(app, settings, client=Client(settings.api_key, send=False))


async def asgi_floor(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The floor: no middleware, every upload refused at once, its body unread."""
    if scope["type"] != "http":
        return
    status = 200 if scope["path"] == "/healthz" else 503
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def wsgi_floor(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """As `asgi_floor`."""
    ok = environ["PATH_INFO"] == "/healthz"
    start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"ok"]


# ----------------------------------------------------------------------- the upstream


async def _upstream_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").lower().split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            if "chunked" in headers.get("transfer-encoding", ""):
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                left = int(headers.get("content-length", "0"))
                while left:
                    left -= len(await reader.read(min(left, SLICE)))
                    if reader.at_eof() and left:
                        return
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def _serve_upstream() -> None:
    server = await asyncio.start_server(_upstream_connection, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()


# ------------------------------------------------------------------------- the prober


def _probe(url: str) -> None:
    """GET /healthz every PROBE_EVERY s on PROBERS connections until stdin closes;
    print [[t, seconds|null], ...]."""
    stop = threading.Event()
    samples: list[tuple[float, float | None]] = []
    probers = [threading.Thread(target=_prober, args=(url, stop, samples)) for _ in range(PROBERS)]
    for prober in probers:
        prober.start()
    sys.stdin.read()
    stop.set()
    for prober in probers:
        prober.join()
    print(json.dumps(sorted(samples)))


def _prober(url: str, stop: threading.Event, samples: list[tuple[float, float | None]]) -> None:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=REQUEST_TIMEOUT)
    while not stop.is_set():
        started = time.monotonic()
        try:
            connection.request("GET", "/healthz")
            reply = connection.getresponse()
            reply.read()
            ok = reply.status == 200
        except (OSError, http.client.HTTPException):
            connection.close()
            ok = False
        elapsed = time.monotonic() - started
        samples.append((started, elapsed if ok else None))
        stop.wait(max(0.0, PROBE_EVERY - elapsed))


# -------------------------------------------------------------------------- the storm


async def _upload(port: int, size: int, body: memoryview) -> str:
    head = (
        f"POST /ingest/s/?compression=gzip-js&ver=1.449.2 HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {size}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as error:
        return f"connect: {type(error).__name__}"
    try:

        async def send() -> None:
            writer.write(head)
            for start in range(0, size, SLICE):
                writer.write(body[start : start + SLICE])
                await writer.drain()

        sending = asyncio.ensure_future(send())
        try:
            status_line = await reader.readline()  # an early answer (503, 413) need not wait
        finally:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
        parts = status_line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            return parts[1].decode()
        return "closed without an answer"
    except OSError as error:
        return f"error: {type(error).__name__}"
    finally:
        writer.close()


async def _storm(port: int, uploads: int, size: int) -> Counter[str]:
    body = memoryview(b"x" * size)

    async def bounded() -> str:
        try:
            return await asyncio.wait_for(_upload(port, size, body), REQUEST_TIMEOUT)
        except asyncio.TimeoutError:
            return "timeout"

    tasks = [asyncio.ensure_future(bounded()) for _ in range(uploads)]
    done, pending = await asyncio.wait(tasks, timeout=STORM_TIMEOUT)
    for task in pending:
        task.cancel()
    answers = Counter(task.result() for task in done)
    if pending:
        answers["storm timeout"] += len(pending)
    return answers


# --------------------------------------------------------------------- the processes


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _command(kind: str, port: int, floor: bool = False) -> list[str]:
    if kind == "uvicorn":
        app = ("proxy_storm:asgi_floor",) if floor else ("--factory", "proxy_storm:asgi_factory")
        return [
            *(sys.executable, "-m", "uvicorn", *app),
            *("--app-dir", str(BENCH), "--host", "127.0.0.1", "--port", str(port)),
            *("--workers", "1", "--http", "h11", "--loop", "asyncio", "--lifespan", "off"),
            *("--no-access-log", "--log-level", "warning", "--backlog", "4096"),
        ]
    return [
        *(
            sys.executable,
            "-m",
            "gunicorn",
            f"proxy_storm:{'wsgi_floor' if floor else 'wsgi_factory()'}",
        ),
        *("--pythonpath", str(BENCH), "--bind", f"127.0.0.1:{port}", "--workers", "1"),
        *("--worker-class", "gthread", "--threads", "8", "--worker-connections", "4096"),
        *("--backlog", "4096", "--no-control-socket", "--log-level", "warning"),
    ]


def _rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {field_name} for {pid}")
    return int(match.group(1))


def _serving_pid(kind: str, process: subprocess.Popen[bytes]) -> int:
    """The process that serves: uvicorn's own, gunicorn's one worker."""
    if kind == "uvicorn":
        return process.pid
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise RuntimeError("gunicorn started no worker")


@contextmanager
def _process(command: list[str], **options: Any) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(command, **options)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _get(port: int, path: str, body: bytes | None = None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST" if body else "GET", path, body=body)
        reply = connection.getresponse()
        reply.read()
        return reply.status
    finally:
        connection.close()


def _wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            if _get(port, "/healthz") == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the server did not answer /healthz in time")


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


@dataclass
class Storm:
    server: str
    config: str
    uploads: int
    size: int
    rss_base_mib: float = 0.0
    rss_peak_mib: float = 0.0
    answers: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    idle_ms: dict[str, float] = field(default_factory=dict)
    storm_ms: dict[str, float] = field(default_factory=dict)
    probes_failed: int = 0
    floor: bool = False
    waves: int = 1

    @property
    def growth_mib(self) -> float:
        return self.rss_peak_mib - self.rss_base_mib


def measure(
    kind: str,
    uploads: int,
    size: int,
    log: Callable[[str], None],
    *,
    floor: bool = False,
    waves: int | None = None,
    idle: float = IDLE_SECONDS,
) -> Storm:
    """One storm against `kind`, with its own upstream and prober.

    With `floor`, the server runs a bare app that refuses every upload at once
    (what the cap does, without the middleware): what the server itself costs.
    `waves` of `uploads` each (default: `WAVES` for the full 1,000, else one);
    `idle` seconds of probing before the storm.
    """
    if waves is None:
        waves = WAVES if uploads >= UPLOADS else 1
    result = Storm(kind, SERVER_CONFIG[kind], uploads, size, floor=floor, waves=waves)
    me = [sys.executable, str(Path(__file__).resolve())]
    pipes: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
    with _process([*me, "upstream"], **pipes) as upstream:
        assert upstream.stdout is not None
        assert upstream.stdin is not None
        upstream_port = int(upstream.stdout.readline())
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("POSTHOG_")}
        env.update(
            POSTHOG_API_KEY="phc_bench_project_key",
            POSTHOG_HOST=f"http://127.0.0.1:{upstream_port}",
            POSTHOG_IDENTITY_SECRET="bench-secret-0123456789abcdef0123456789abcdef",
            POSTHOG_IDENTITY_PROXY_PATH="/ingest",
            **SERVER_ENV[kind],
        )
        if os.environ.get("POSTHOG_IDENTITY_PROXY_CONCURRENCY"):  # to explore other caps
            env["POSTHOG_IDENTITY_PROXY_CONCURRENCY"] = os.environ[
                "POSTHOG_IDENTITY_PROXY_CONCURRENCY"
            ]
        with _process(_command(kind, port, floor), cwd=ROOT, env=env) as server:
            _wait_ready(port, server)
            pid = _serving_pid(kind, server)
            for _ in range(20):  # warm: the proxy's threads, pools and code paths
                status = _get(port, "/ingest/s/", b"x" * size)
                if status != (503 if floor else 200):
                    raise RuntimeError(f"a warm-up upload answered {status}")
            time.sleep(0.5)
            result.rss_base_mib = _rss_kib(pid) / 1024
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
            with _process([*me, "probe", f"http://127.0.0.1:{port}"], **pipes) as prober:
                assert prober.stdin is not None
                assert prober.stdout is not None
                time.sleep(idle)
                what = f"{kind} (floor)" if floor else kind
                log(f"  {what}: {waves} x {uploads} concurrent uploads of {size // 1024} KiB ...")
                answers = Counter[str]()
                windows: list[tuple[float, float]] = []
                for wave in range(waves):
                    if wave:
                        time.sleep(WAVE_PAUSE)
                    started = time.monotonic()
                    answers += asyncio.run(_storm(port, uploads, size))
                    windows.append((started, time.monotonic()))
                result.rss_peak_mib = _rss_kib(pid, "VmHWM") / 1024
                prober.stdin.close()
                samples = json.loads(prober.stdout.read())
        upstream.stdin.close()
    result.answers = dict(answers)
    result.seconds = sum(end - start for start, end in windows)
    idle = [s for t, s in samples if t < windows[0][0] and s is not None]
    storm = [
        s for t, s in samples if s is not None and any(start <= t <= end for start, end in windows)
    ]
    result.probes_failed = sum(1 for _, s in samples if s is None)
    result.idle_ms = {"p50": _quantile(idle, 0.5), "p95": _quantile(idle, 0.95), "n": len(idle)}
    result.storm_ms = {
        "p50": _quantile(storm, 0.5),
        "p95": _quantile(storm, 0.95),
        "n": len(storm),
    }
    return result


def as_row(storm: Storm) -> dict[str, Any]:
    counted = Counter(storm.answers)
    other = {k: v for k, v in counted.items() if k not in ("200", "503")}
    return {
        "server": storm.server,
        "config": storm.config
        + (", bare app refusing every upload (floor)" if storm.floor else ""),
        "floor": storm.floor,
        "uploads": storm.uploads,
        "waves": storm.waves,
        "size": storm.size,
        "rss_base_mib": round(storm.rss_base_mib, 1),
        "rss_peak_mib": round(storm.rss_peak_mib, 1),
        "rss_growth_mib": round(storm.growth_mib, 1),
        "ok": counted.get("200", 0),
        "busy": counted.get("503", 0),
        "other": other,
        "seconds": round(storm.seconds, 1),
        "idle_ms": storm.idle_ms,
        "storm_ms": storm.storm_ms,
        "latency_ratio": storm.storm_ms["p50"] / storm.idle_ms["p50"]
        if storm.idle_ms["n"] and storm.storm_ms["n"]
        else None,
        "probes_failed": storm.probes_failed,
    }


def main() -> None:
    if sys.argv[1:2] == ["upstream"]:
        asyncio.run(_serve_upstream())
    elif sys.argv[1:2] == ["probe"]:
        _probe(sys.argv[2])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
