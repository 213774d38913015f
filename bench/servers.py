"""Throughput under real servers: uvicorn and gunicorn, bare and wrapped, load from another process.

Each server runs in its own process on an ephemeral port of 127.0.0.1, one
worker, serving `served.py`'s 2 KiB HTML page; the wrapped app injects the
snippet into every page, and so does the page's floor (posthog's public context
and one replace: less than the job). `load.py` (or `wrk`, when installed) drives
it from a second process as a returning visitor (a valid identity cookie, so no
Set-Cookie). The bare, floor and wrapped servers run side by side and are
loaded by turns, in a rotated order each round, so each ratio pairs
neighbouring runs. Servers are always stopped, whatever happens.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from common import COOKIE_NAME, identity_cookie
from measure import Series
from posthog_identity.html import MARKER

BENCH = Path(__file__).resolve().parent
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CONCURRENCY = 8


class ServerError(Exception):
    pass


@dataclass
class Load:
    duration: float
    warmup: float
    rounds: int
    concurrency: int = CONCURRENCY


@dataclass
class Turns:
    """Servers loaded by turns: each app's series, per round."""

    rps: dict[str, Series]  #: requests per second, by app
    cpu: dict[str, Series]  #: server CPU seconds per request, by app
    client_cpu: Series  #: the load generator's CPU share, every run


@dataclass
class ServerResult:
    server: str
    config: str
    turns: Turns  #: by app of `PAGE_APPS`
    tool: str = "load.py"


#: The page's apps in `served.py`, and those whose pages carry the snippet.
PAGE_APPS = ("bare", "floor", "wrapped")
SNIPPET_APPS = ("floor", "wrapped")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _command(server: str, app: str, port: int) -> list[str]:
    if server == "uvicorn":
        return [
            sys.executable,
            "-m",
            "uvicorn",
            f"served:asgi_{app}",
            "--app-dir",
            str(BENCH),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--http",
            "h11",
            "--loop",
            "asyncio",
            "--lifespan",
            "off",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    return [
        sys.executable,
        "-m",
        "gunicorn",
        f"served:wsgi_{app}",
        "--pythonpath",
        str(BENCH),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--worker-class",
        "gthread",
        "--threads",
        "4",
        "--no-control-socket",
        "--log-level",
        "warning",
    ]


SERVER_CONFIG = {
    "uvicorn": "1 worker, h11, asyncio",
    "gunicorn": "1 worker, gthread, 4 threads",
}


def _get(port: int, cookie: str) -> tuple[int, list[tuple[str, str]], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/", headers={"Cookie": cookie})
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def server_cpu(pid: int) -> float | None:
    """CPU seconds used so far by a server process and its children (Linux /proc), or None.

    The noise check of the throughput figures: other jobs on the machine take
    throughput away, but hardly change what one request costs the server.
    """
    total = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:  # fields[1] is the parent's pid
            total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / _TICKS


@contextmanager
def running(server: str, app: str, cookie: str) -> Iterator[tuple[int, int]]:
    """Start one server process, wait until it answers correctly, always stop it.

    Yields the port and the server's pid.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTHOG_")}
    env["PYTHONUNBUFFERED"] = "1"
    port = _free_port()
    process = subprocess.Popen(
        _command(server, app, port),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: gunicorn's worker goes with it
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if process.poll() is not None:
                errors = process.stderr.read().decode() if process.stderr else ""
                raise ServerError(f"{server} ({app}) exited: {errors}")
            try:
                status, headers, body = _get(port, cookie)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise ServerError(f"{server} ({app}) did not answer on port {port}") from None
                time.sleep(0.05)
        cookies = [v for k, v in headers if k.lower() == "set-cookie"]
        if status != 200 or (MARKER in body) != (app in SNIPPET_APPS) or cookies:
            raise ServerError(
                f"{server} ({app}): status {status}, snippet {MARKER in body}, cookies {cookies}"
            )
        yield port, process.pid
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if process.stderr is not None:
        process.stderr.close()


def _load(port: int, cookie: str, wrapped: bool, load: Load) -> dict[str, float]:
    command = [
        sys.executable,
        str(BENCH / "load.py"),
        "--port",
        str(port),
        "--cookie",
        cookie,
        "--concurrency",
        str(load.concurrency),
        "--duration",
        str(load.duration),
        "--warmup",
        str(load.warmup),
        "--no-set-cookie",
        COOKIE_NAME,
        "--expect" if wrapped else "--refuse",
        MARKER.decode(),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=load.duration + load.warmup + 60
    )
    if done.returncode != 0:
        raise ServerError(f"load generator failed ({done.returncode}): {done.stdout}{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout)
    return result


_WRK_RPS = re.compile(r"^Requests/sec:\s+([0-9.]+)", re.MULTILINE)
_WRK_TOTAL = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
_WRK_BAD = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)|Socket errors:.*")


def wrk_path() -> str | None:
    return shutil.which("wrk")


def _wrk(wrk: str, port: int, cookie: str, load: Load) -> dict[str, float]:
    """wrk does not check bodies: `running` checked the first response of each server."""
    base = [wrk, "-t1", f"-c{load.concurrency}", "-H", f"Cookie: {cookie}"]
    url = f"http://127.0.0.1:{port}/"
    # wrk counts whole seconds: a warm-up under half a second (the smoke run's) is skipped.
    runs = []
    if load.warmup >= 0.5:
        warmup = f"-d{math.ceil(load.warmup)}s"
        runs.append(
            subprocess.run([*base, warmup, url], capture_output=True, text=True, check=True)
        )
    done = subprocess.run(
        [*base, f"-d{max(1, round(load.duration))}s", url],
        capture_output=True,
        text=True,
        timeout=load.duration + 60,
        check=True,
    )
    bad = _WRK_BAD.search(done.stdout)
    found = _WRK_RPS.search(done.stdout)
    totals = [_WRK_TOTAL.search(run.stdout) for run in (*runs, done)]
    if bad or not found or not all(totals):
        raise ServerError(f"wrk reported errors: {done.stdout}")
    # Every request the server answered, warm-up included (as load.py counts them):
    # the server's CPU is read around both runs.
    served = sum(float(total.group(1)) for total in totals if total)
    return {"rps": float(found.group(1)), "client_cpu": float("nan"), "total_requests": served}


def _tool(tool: str) -> str | None:
    """wrk's path when it is to be used, else None (load.py)."""
    wrk = wrk_path() if tool in ("auto", "wrk") else None
    if tool == "wrk" and wrk is None:
        raise ServerError("--load-tool wrk: wrk is not installed (Debian package wrk)")
    return wrk


def _run(
    wrk: str | None, port: int, pid: int, cookie: str, snippet: bool, load: Load
) -> tuple[float, float, float | None]:
    """One loaded run: requests per second, the load generator's CPU share, and
    the server's CPU seconds per request (None where /proc cannot tell)."""
    cpu_before = server_cpu(pid)
    if wrk is not None:
        outcome = _wrk(wrk, port, cookie, load)
    else:
        outcome = _load(port, cookie, snippet, load)
    cpu_after = server_cpu(pid)
    served = outcome.get("total_requests")
    per_request = None
    if cpu_before is not None and cpu_after is not None and served:
        per_request = (cpu_after - cpu_before) / served
    return outcome["rps"], outcome["client_cpu"], per_request


def by_turns(
    server: str,
    apps: tuple[str, ...],
    wrk: str | None,
    load: Load,
    log: Callable[[str], None],
    label: str,
) -> Turns:
    """Start `server` once per app, side by side, and load them by turns, in an order
    rotated each round, so a busy phase of the machine hits every app alike."""
    cookie = f"{COOKIE_NAME}={identity_cookie()}"
    turns = Turns({app: Series() for app in apps}, {app: Series() for app in apps}, Series())
    with ExitStack() as stack:
        started = {app: stack.enter_context(running(server, app, cookie)) for app in apps}
        for round_index in range(load.rounds):
            shift = round_index % len(apps)
            for app in apps[shift:] + apps[:shift]:
                port, pid = started[app]
                rps, client_cpu, cpu = _run(wrk, port, pid, cookie, app in SNIPPET_APPS, load)
                turns.rps[app].samples.append(rps)
                turns.client_cpu.samples.append(client_cpu)
                if cpu is not None:
                    turns.cpu[app].samples.append(cpu)
            log(
                f"  {label} round {round_index + 1}: "
                + ", ".join(f"{app} {turns.rps[app].samples[-1]:.0f} rps" for app in apps)
            )
    return turns


def measure(
    servers: list[str], load: Load, tool: str = "auto", log: Callable[[str], None] = print
) -> list[ServerResult]:
    """`tool`: ``auto`` (wrk when installed, else load.py), ``wrk`` or ``python``."""
    wrk = _tool(tool)
    return [
        ServerResult(
            server,
            SERVER_CONFIG[server],
            by_turns(server, PAGE_APPS, wrk, load, log, server),
            tool="wrk" if wrk else "load.py",
        )
        for server in servers
    ]


#: The API case under uvicorn: the same JSON endpoint bare, through ours and
#: through posthog's own `PosthogASGIMiddleware` (served.py's `asgi_json_*`).
API_APPS = ("json_bare", "json_ours", "json_peer")


@dataclass
class ApiResult:
    config: str
    turns: Turns  #: by app of `API_APPS`
    tool: str = "load.py"


def measure_api(load: Load, tool: str = "auto", log: Callable[[str], None] = print) -> ApiResult:
    """A returning visitor's JSON call under uvicorn, bare, ours and posthog's
    middleware side by side, loaded by turns."""
    wrk = _tool(tool)
    turns = by_turns("uvicorn", API_APPS, wrk, load, log, "uvicorn API")
    return ApiResult(SERVER_CONFIG["uvicorn"], turns, tool="wrk" if wrk else "load.py")
