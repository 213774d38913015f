"""Background jobs: a Celery task enqueued during a request captures as that request.

The web app of `tests.sites.jobs` (Flask under gunicorn, Django and a plain
ASGI app under uvicorn) and a real Celery worker run in subprocesses, configured
by environment variables only, sharing a filesystem broker; both send to the
app's own `Sink`. The three apps start and are visited at the same time
(`jobs`). A visitor with our signed cookie and posthog-js's session header asks
for `/enqueue`; the task, run by the worker, captures with the visitor's
distinct id and session, because posthog's Celery integration carries
posthog's context in the task's headers.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from subprocess import Popen
from typing import Any

import httpx
import pytest

from posthog_identity.signing import CookieCodec, CookieState
from posthog_identity.testing import Sink
from tests.helpers.project import SECRET
from tests.helpers.servers import (
    EVENT_TIMEOUT,
    READY_TIMEOUT,
    NoCookies,
    Started,
    gunicorn_command,
    read_log,
    server_environment,
    start_process,
    stop_process,
    uvicorn_factory_command,
    wait_until_ready,
)
from tests.helpers.wire import COOKIE, PERSONLESS, distinct_id

SITE = "tests.sites.jobs"
JOB_DONE = "Job Done"
SESSION = "0190a4b2-7c3e-7d41-8b2a-5f6e7d8c9b0a"

WEB = {
    "flask-gunicorn": lambda port: gunicorn_command(f"{SITE}:flask_wsgi()", port),
    "django-uvicorn": lambda port: uvicorn_factory_command(f"{SITE}:django_asgi", port),
    "plain-asgi-uvicorn": lambda port: uvicorn_factory_command(f"{SITE}:plain_asgi", port),
}


def worker_command(port: int) -> list[str]:
    """A real Celery worker, in one process (the port is not used)."""
    return [
        *(sys.executable, "-m", "celery", "-A", SITE, "worker", "--pool", "solo"),
        *("--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"),
        *("--hostname", f"jobs-{uuid.uuid4().hex[:8]}@%h"),
    ]


def wait_for_worker(process: Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while " ready." not in read_log(log):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the Celery worker did not start:\n{read_log(log)}")
        time.sleep(0.05)


@dataclass(frozen=True)
class Enqueued:
    """A visitor's `/enqueue` on one web app, and the `Job Done` its task captured."""

    anonymous_id: str
    order: str
    done: dict[str, Any]


def start(name: str, sink: Sink, directory: Path, started: list[Started]) -> str:
    """The web app `name` and a worker, sharing a broker folder, added to `started`;
    returns the web app's URL."""
    broker = directory / "broker"
    broker.mkdir()
    env = {**server_environment(sink.url), "JOBS_BROKER": str(broker)}
    kind = "gunicorn" if "gunicorn" in name else "uvicorn"
    worker = start_process(
        "celery", worker_command, env, directory, log_name="worker", wait=wait_for_worker
    )
    started.append(worker)
    server = start_process(
        kind, WEB[name], env, directory, wait=partial(wait_until_ready, kind, path="/ok")
    )
    started.append(server)
    return server.url


def enqueue(url: str, sink: Sink) -> Enqueued:
    """A visitor with our cookie and a session asks `url` for `/enqueue`; waits for
    the task's capture."""
    anonymous_id, order = str(uuid.uuid4()), str(uuid.uuid4())
    state = CookieState(anonymous_id, None, False, int(time.time()))
    headers = {
        "Cookie": f"{COOKIE}={CookieCodec((SECRET,)).dumps(state)}",
        "X-POSTHOG-SESSION-ID": SESSION,
    }
    with httpx.Client(base_url=url, timeout=10.0, cookies=NoCookies()) as http:
        assert http.get("/enqueue", params={"order": order}, headers=headers).status_code == 200

    [done] = sink.wait_for(
        lambda found: any(e["properties"].get("order") == order for e in found),
        event=JOB_DONE,
        timeout=EVENT_TIMEOUT,
    )[-1:]
    return Enqueued(anonymous_id, order, done)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Enqueued]]]:
    """Every web app with its worker, each started and visited at the same time.

    Starting a worker and a web app, then waiting for the task's capture, take
    seconds each: the apps do it together (all start, then all are visited).
    Each has its own sink and broker; a failed start or visit fails its own test.
    """
    directories = {name: tmp_path_factory.mktemp(name) for name in WEB}
    started: dict[str, list[Started]] = {name: [] for name in WEB}

    def enqueue_once_started(starting: Future[str], sink: Sink) -> Enqueued:
        return enqueue(starting.result(), sink)

    # The pool exits before the sinks: they receive what the processes flush on stopping.
    with ExitStack() as stack, ThreadPoolExecutor(2 * len(WEB)) as pool:
        try:
            sinks = {name: stack.enter_context(Sink()) for name in WEB}
            starting = {
                name: pool.submit(start, name, sinks[name], directories[name], started[name])
                for name in WEB
            }
            # Visited once all have started: a start's load never delays another's task.
            wait(starting.values())
            enqueued = {
                name: pool.submit(enqueue_once_started, starting[name], sinks[name]) for name in WEB
            }
            wait(enqueued.values())
            yield enqueued
        finally:
            every = [process.process for processes in started.values() for process in processes]
            list(pool.map(stop_process, every))
    # Reported at the teardown of the module's last test.
    for processes in started.values():
        for process in processes:
            logged = read_log(process.log)
            assert "posthog_identity: " not in logged, logged  # our logger's lines


@pytest.fixture(scope="module", params=list(WEB), ids=list(WEB))
def web(request: pytest.FixtureRequest, jobs: dict[str, Future[Enqueued]]) -> Enqueued:
    """The visit to the web app `request.param` (its worker ran the task)."""
    return jobs[str(request.param)].result()


def test_a_task_enqueued_during_a_request_captures_with_its_distinct_id_and_session(
    web: Enqueued,
) -> None:
    done = web.done
    properties = done["properties"]
    assert properties["order"] == web.order
    assert properties["celery_task_name"] == "jobs.record"  # captured in the worker's task
    assert distinct_id(done) == web.anonymous_id
    assert properties["$session_id"] == SESSION
    # The anonymous request's captures are personless; so are its job's.
    assert properties[PERSONLESS] is False
