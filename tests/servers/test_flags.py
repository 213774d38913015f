"""Feature flags under a real server: uvicorn serves the flags site, its page shows the
variant the bootstrap carries, and PostHog's own SDK agrees; and the same site in an
app that configures posthog's module itself, under gunicorn and uvicorn."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
from posthog.client import Client

from posthog_identity.testing import Sink
from tests.helpers.drivers import Reply
from tests.helpers.flags import sdk_flag
from tests.helpers.project import API_KEY, ROOT, SECRET
from tests.helpers.servers import (
    NoCookies,
    gunicorn_command,
    server_environment,
    start_process,
    stop_process,
    uvicorn_factory_command,
    wait_until_ready,
)
from tests.sites.flags import (
    EXPERIMENT,
    PERSONAL_KEY,
    bootstrap,
    distinct_id,
    rendered_variant,
)

# -- under a real server ----------------------------------------------------------------


@contextmanager
def uvicorn_server(env: dict[str, str], log: Path) -> Iterator[str]:
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "tests.sites.flags:flag_server_app",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--lifespan",
        "on",
    ]
    with log.open("ab") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output
        )
    try:
        deadline = time.monotonic() + 30
        while (found := re.search(r"Uvicorn running on (http://\S+)", log.read_text())) is None:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield found[1]
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert "Traceback" not in log.read_text(), log.read_text()


def as_reply(response: httpx.Response) -> Reply:
    return Reply(response.status_code, list(response.headers.items()), response.content)


def test_under_uvicorn_the_html_shows_the_bootstrapped_variant(
    flag_sink: Sink, independent: Client, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTHOG_")}
    env.update(
        POSTHOG_API_KEY=API_KEY,
        POSTHOG_HOST=flag_sink.url,
        POSTHOG_IDENTITY_SECRET=SECRET,
        POSTHOG_PERSONAL_API_KEY=PERSONAL_KEY,
        POSTHOG_IDENTITY_BOOTSTRAP_FLAGS="true",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
    )
    variants = set()
    with (
        uvicorn_server(env, tmp_path / "uvicorn.log") as url,
        httpx.Client(base_url=url, timeout=10) as http,
    ):
        # The server's client loads the definitions when it first needs them
        # (or, if it loads them in the background, soon after start-up).
        deadline = time.monotonic() + 10
        while bootstrap(as_reply(http.get("/"))) is None:
            assert time.monotonic() < deadline, "the server never bootstrapped flags"
            time.sleep(0.05)
        http.cookies.clear()
        users: list[str | None] = [None, None, None, *(f"shopper-{n}" for n in range(8))]
        for user in users:
            reply = as_reply(http.get("/variant", headers={"X-User": user} if user else {}))
            http.cookies.clear()
            flags = bootstrap(reply)
            assert flags is not None
            shown = rendered_variant(reply)
            assert shown == flags["values"][EXPERIMENT]
            assert shown == sdk_flag(independent, EXPERIMENT, distinct_id(reply))
            if user is not None:
                variants.add(shown)

    assert variants == {"control", "test"}
    assert flag_sink.flag_requests() == []  # the server evaluated locally


# -- an app that configures posthog's module itself ------------------------------------

MODULE_APPS = {
    "gunicorn": partial(gunicorn_command, "tests.sites.flags:module_wsgi_app()"),
    "uvicorn": partial(uvicorn_factory_command, "tests.sites.flags:module_asgi_app"),
}
FIRST_VISITS = 50


@contextmanager
def module_app(kind: str, sink: Sink, log_dir: Path) -> Iterator[str]:
    """The flags site configuring posthog's module itself, with a personal key and
    flag bootstrapping in the environment, served by `kind`; yields its URL."""
    env = server_environment(sink.url)
    env.update(POSTHOG_PERSONAL_API_KEY=PERSONAL_KEY, POSTHOG_IDENTITY_BOOTSTRAP_FLAGS="true")
    started = start_process(
        kind, MODULE_APPS[kind], env, log_dir, wait=partial(wait_until_ready, kind, path="/")
    )
    try:
        yield started.url
    finally:
        killed = stop_process(started.process)
    assert not killed
    assert "Traceback" not in started.log.read_text(), started.log.read_text()


@pytest.mark.parametrize("kind", list(MODULE_APPS))
def test_an_app_configuring_posthogs_module_bootstraps_first_visits_as_posthog_evaluates(
    flag_sink: Sink, independent: Client, tmp_path: Path, kind: str
) -> None:
    with (
        module_app(kind, flag_sink, tmp_path) as url,
        httpx.Client(base_url=url, timeout=10, cookies=NoCookies()) as http,
    ):
        # Its client loads the definitions in the background from start-up.
        deadline = time.monotonic() + 10
        while bootstrap(as_reply(http.get("/"))) is None:
            assert time.monotonic() < deadline, "no first visit was ever bootstrapped"
            time.sleep(0.05)
        visits = [as_reply(http.get("/variant")) for _ in range(FIRST_VISITS)]

    bootstrapped = [reply for reply in visits if bootstrap(reply) is not None]
    assert len(bootstrapped) == FIRST_VISITS
    variants = set()
    for reply in visits:
        flags = bootstrap(reply)
        assert flags is not None
        shown = rendered_variant(reply)
        assert (
            shown
            == flags["values"][EXPERIMENT]
            == sdk_flag(independent, EXPERIMENT, distinct_id(reply))
        )
        variants.add(shown)
    assert variants == {"control", "test"}
    assert flag_sink.flag_requests() == []  # evaluated locally, with the handed key
