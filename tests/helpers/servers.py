"""Real servers in subprocesses, for the tests that drive them over HTTP.

A server runs on a free port, configured by environment variables, its output
in a log file. `start_process` waits until *our* process serves (its own log
line names the port, then the app answers), picks another port when the one
chosen was taken meanwhile, and `stop_process` stops it gracefully, killing it
only if it hangs. The library's failure policy hides its errors from
responses, so the log is where they show: `check_errors` fails on a traceback.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any

import httpx
import pytest

from posthog_identity.testing import Sink
from tests.helpers.project import API_KEY, ROOT, SECRET
from tests.helpers.wire import (
    distinct_id,
)
from tests.sites.concurrency import READY_TOKEN_VARIABLE

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
START_ATTEMPTS = 3

# What each server logs once it has bound its port (waitress: at the line's end).
LISTENING = {
    "gunicorn": "Listening at: http://127.0.0.1:{port} ",
    "uvicorn": "Uvicorn running on http://127.0.0.1:{port} ",
    "hypercorn": "Running on http://127.0.0.1:{port} ",
    "waitress": "Serving on http://127.0.0.1:{port}\n",
    "granian": "Listening at: http://127.0.0.1:{port}\n",
}
# What they log when the port is taken (lowercased).
IN_USE = ("address already in use", "connection in use")


class PortTaken(Exception):
    """The server could not bind the port picked for it (someone took it meanwhile)."""


class NoCookies(CookieJar):
    """A jar that keeps nothing: the tests send the identity cookie themselves."""

    def __init__(self) -> None:
        super().__init__(DefaultCookiePolicy(allowed_domains=[]))


@dataclass
class Server:
    kind: str
    url: str
    sink: Sink
    process: subprocess.Popen[bytes]
    log: Path
    log_size_at_teardown: int = 0  # where shutdown's own log lines begin

    def output(self) -> str:
        return read_log(self.log)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def read_log(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")


def server_environment(sink_url: str) -> dict[str, str]:
    """This environment without POSTHOG_*, configured to send to `sink_url`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTHOG_")}
    env.update(
        POSTHOG_API_KEY=API_KEY,
        POSTHOG_HOST=sink_url,
        POSTHOG_IDENTITY_SECRET=SECRET,
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
        PYTHONUNBUFFERED="1",
    )
    return env


def gunicorn_command(target: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        target,
        "--bind",
        f"127.0.0.1:{port}",
        # One process, so "one alias per process" covers concurrent requests;
        # threads, so those requests really run at the same time.
        "--workers",
        "1",
        "--worker-class",
        "gthread",
        "--threads",
        "4",
        "--graceful-timeout",
        "10",
        # Not the shared ~/.gunicorn/gunicorn.ctl: two servers could collide.
        "--no-control-socket",
        "--access-logfile",
        "-",
    ]


def uvicorn_factory_command(factory: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        factory,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--lifespan",
        "on",
        "--timeout-graceful-shutdown",
        "10",
    ]


def granian_command(target: str, port: int, *, factory: bool = False) -> list[str]:
    """granian serving the WSGI app `target`: it reads the status and headers as
    soon as the application returns, before iterating the body."""
    return [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "wsgi",
        *(["--factory"] if factory else []),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--blocking-threads",
        "4",
        target,
    ]


def app_command(kind: str, port: int, module: str = "tests.sites.basic") -> list[str]:
    """gunicorn or granian serving `module`'s `wsgi_factory()`, or uvicorn its `asgi_factory`."""
    if kind == "gunicorn":
        return gunicorn_command(f"{module}:wsgi_factory()", port)
    if kind == "granian":
        return granian_command(f"{module}:wsgi_factory", port, factory=True)
    return uvicorn_factory_command(f"{module}:asgi_factory", port)


def stop_process(process: subprocess.Popen[bytes], how: signal.Signals = signal.SIGTERM) -> bool:
    """Signal `how` (graceful: the servers flush events), then kill if it hangs.

    Returns True when the process had to be killed.
    """
    killed = False
    if process.poll() is None:
        process.send_signal(how)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            killed = True
    process.wait()
    return killed


def wait_until_ready(
    kind: str,
    process: subprocess.Popen[bytes],
    port: int,
    log: Path,
    *,
    path: str = "/whoami",
    answers: Callable[[httpx.Response], bool] = lambda reply: reply.status_code == 200,
    listening: str | None = None,
) -> None:
    """Wait until *our* process has bound the port and `path` answers.

    Its own log line `listening` (default: `LISTENING[kind]`) proves the port is
    ours (no server sets SO_REUSEPORT here), so a stranger that grabbed the port
    meanwhile is never mistaken for it; with `listening=""`, `answers` must prove it.
    """
    line = (LISTENING[kind] if listening is None else listening).format(port=port)
    deadline = time.monotonic() + READY_TIMEOUT
    with httpx.Client(
        base_url=f"http://127.0.0.1:{port}", timeout=2.0, cookies=NoCookies()
    ) as http:
        while True:
            output = read_log(log)
            if any(marker in output.lower() for marker in IN_USE):
                raise PortTaken(output)
            if process.poll() is not None:
                pytest.fail(f"{kind} exited with {process.returncode} while starting:\n{output}")
            if line in output:
                try:
                    if answers(http.get(path)):
                        return
                except httpx.TransportError:
                    pass
            if time.monotonic() > deadline:
                pytest.fail(f"{kind} not ready after {READY_TIMEOUT}s:\n{output}")
            time.sleep(0.05)


@dataclass
class Started:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_process(
    kind: str,
    command: Callable[[int], list[str]],
    env: dict[str, str],
    log_dir: Path,
    *,
    log_name: str | None = None,
    how: signal.Signals = signal.SIGTERM,
    wait: Callable[[subprocess.Popen[bytes], int, Path], None] | None = None,
) -> Started:
    """Run `command(port)` on a free port until ready; another port if it was taken.

    Its output goes to ``log_dir/<log_name or kind>-<attempt>.log``; `wait`
    (default: `wait_until_ready` for `kind`) waits until it serves.
    """
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_port()
        log = log_dir / f"{log_name or kind}-{attempt}.log"
        # Append mode: the child's writes never land over what was read.
        with log.open("ab") as output:
            process = subprocess.Popen(
                command(port),
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            if wait is None:
                wait_until_ready(kind, process, port, log)
            else:
                wait(process, port, log)
        except PortTaken:
            stop_process(process, how)
            if attempt == START_ATTEMPTS:
                raise
            continue
        except BaseException:
            stop_process(process, how)
            raise
        return Started(port, process, log)
    raise AssertionError("unreachable")


def start_app(
    kind: str,
    sink: Sink,
    log_dir: Path,
    module: str = "tests.sites.basic",
    env: dict[str, str] | None = None,
) -> Server:
    """`app_command(kind, port, module)` on a free port, sending to `sink` (unless `env`
    says otherwise), ready once it answers ``/whoami``."""
    command = partial(app_command, kind, module=module)
    environment = server_environment(sink.url) if env is None else env
    started = start_process(kind, command, environment, log_dir)
    return Server(kind, started.url, sink, started.process, started.log)


def check_log(kind: str, log: Path, when: str, since: int = 0) -> None:
    """Fail if the log shows a traceback after byte `since`."""
    logged = log.read_bytes()[since:].decode("utf-8", "replace")
    if "Traceback" in logged:
        pytest.fail(f"{kind} logged errors {when}:\n{logged}")


def check_errors(server: Server, when: str, since: int = 0) -> None:
    """Fail if the server logged a traceback: the library's failure policy hides
    its errors from responses, so its log is where they show."""
    check_log(server.kind, server.log, when, since)


def check_stopped(
    kind: str,
    log: Path,
    killed: bool,
    *,
    how: signal.Signals = signal.SIGTERM,
    since: int = 0,
) -> None:
    """Fail if the server had to be killed, or logged a traceback while shutting down."""
    assert not killed, f"{kind} ignored {how.name} and was killed:\n{read_log(log)}"
    check_log(kind, log, "while shutting down", since)


def serving(server: Server, how: signal.Signals = signal.SIGTERM) -> Iterator[Server]:
    """A fixture's body for a started server: checks its start-up log, yields it,
    then stops it with `how` and fails if it was killed or logged errors after
    `server.log_size_at_teardown`.

    pytest finalizes a parametrized module fixture when the next parameter is
    set up, so a failure at teardown is reported at that test's setup.
    """
    try:
        check_errors(server, "while starting")
        yield server
    finally:
        killed = stop_process(server.process, how)
    check_stopped(server.kind, server.log, killed, how=how, since=server.log_size_at_teardown)


def checking_test(server: Server) -> Iterator[None]:
    """An autouse fixture's body: fail the test if the server logged a traceback
    while it ran, then move `server.log_size_at_teardown` past it."""
    start = server.log.stat().st_size
    yield
    check_errors(server, "during the test", since=start)
    server.log_size_at_teardown = server.log.stat().st_size


#: How long a test waits for a server's events to reach the sink.
EVENT_TIMEOUT = 10.0


# ---------------------------------------------------------------------------
# The concurrency site (`tests.sites.concurrency`), for load and fault tests

CONCURRENCY_SITE = "tests.sites.concurrency"
#: Seconds a server keeps an idle connection: longer than any pause of a loaded
#: test machine, so the client never reuses a connection the server is closing.
KEEP_ALIVE = "120"


def _concurrency_command(kind: str, port: int) -> list[str]:
    address = f"127.0.0.1:{port}"
    if kind == "uvicorn":
        return [
            *(sys.executable, "-m", "uvicorn", "--factory", f"{CONCURRENCY_SITE}:asgi_factory"),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
            *("--lifespan", "on", "--no-access-log", "--timeout-graceful-shutdown", "10"),
            *("--timeout-keep-alive", KEEP_ALIVE),
        ]
    if kind == "gunicorn":
        return [
            *(
                sys.executable,
                "-m",
                "gunicorn",
                f"{CONCURRENCY_SITE}:wsgi_factory()",
                "--bind",
                address,
            ),
            # One process: its link memory must dedupe the concurrent logins.
            *("--workers", "1", "--worker-class", "gthread", "--threads", "16"),
            *("--graceful-timeout", "10", "--no-control-socket", "--keep-alive", KEEP_ALIVE),
        ]
    assert kind == "hypercorn"
    # --workers 0: serve in this very process, so SIGTERM reaches the app's lifespan.
    return [
        *(
            sys.executable,
            "-m",
            "hypercorn",
            f"{CONCURRENCY_SITE}:asgi_factory()",
            "--bind",
            address,
        ),
        *("--workers", "0", "--graceful-timeout", "10", "--keep-alive", KEEP_ALIVE),
    ]


@dataclass
class Running:
    """A server process serving `tests.sites.concurrency` on `url`."""

    kind: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return read_log(self.log)


def start_concurrency_site(
    kind: str, posthog_host: str, log_dir: Path, *args: str, **env: str
) -> Running:
    """`kind` serving `tests.sites.concurrency` on a free port, sending to `posthog_host`.

    `args` go to the server's command line, `env` to its environment.
    """
    token = uuid.uuid4().hex
    environment = {**server_environment(posthog_host), READY_TOKEN_VARIABLE: token, **env}
    started = start_process(
        kind,
        lambda port: [*_concurrency_command(kind, port), *args],
        environment,
        log_dir,
        # Until the app answers `token`: proof the port is served by our process.
        wait=partial(
            wait_until_ready, kind, path="/ready", answers=lambda r: r.text == token, listening=""
        ),
    )
    return Running(kind, started.url, started.process, started.log)


def wait_for_events(
    server: Server, event: str, distinct: str, count: int = 1
) -> list[dict[str, Any]]:
    """Wait until `count` events named `event` for `distinct` arrived; return them all."""
    server.sink.wait_for(
        lambda events: sum(distinct_id(e) == distinct for e in events) >= count,
        event=event,
        timeout=EVENT_TIMEOUT,
    )
    return server.sink.events(event=event, distinct_id=distinct)
