"""The examples under their real servers.

Each example runs in a subprocess under a real server on a free 127.0.0.1
port, configured by environment variables (`tests.helpers.servers`' helpers),
with PostHog pointed at one `Sink` for the module. An httpx client with its
own cookie jar walks it like a browser: anonymous visit, login form, page,
logout, page. The server is then stopped the way its operator would stop it
(which flushes the one posthog client they share), so the
events at the sink are complete and absence can be asserted without sleeping.
"""

from __future__ import annotations

import html
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from posthog_identity.testing import Sink
from tests.helpers.pages import html5_parent_of_snippet, snippet_options
from tests.helpers.project import API_KEY, ROOT
from tests.helpers.servers import (
    NoCookies,
    check_stopped,
    free_port,
    read_log,
    server_environment,
    start_process,
    stop_process,
)
from tests.helpers.wire import (
    ALIAS,
    COOKIE,
    PERSONLESS,
    distinct_id,
    identity_set_cookies,
    read_cookie,
)

PAGE_VIEWED = "page viewed"

# ---------------------------------------------------------------------------
# Servers


@dataclass(frozen=True)
class ServerKind:
    name: str  # also how `tests.helpers.servers.LISTENING` knows what it logs once ready
    stop_signal: signal.Signals  # how its operator stops it gracefully

    def command(self, target: str, port: int) -> list[str]:
        python = [sys.executable, "-m", self.name]
        if self.name == "uvicorn":
            return [*python, target, "--host", "127.0.0.1", "--port", str(port), "--lifespan", "on"]
        if self.name == "hypercorn":
            return [*python, target, "--bind", f"127.0.0.1:{port}"]
        if self.name == "gunicorn":
            # Not the shared ~/.gunicorn/gunicorn.ctl: two servers could collide.
            return [*python, target, "--bind", f"127.0.0.1:{port}", "--no-control-socket"]
        assert self.name == "waitress"
        return [*python, f"--listen=127.0.0.1:{port}", target]


SERVERS = {
    kind.name: kind
    for kind in [
        ServerKind("uvicorn", signal.SIGTERM),
        ServerKind("hypercorn", signal.SIGTERM),
        ServerKind("gunicorn", signal.SIGTERM),
        # waitress handles no SIGTERM (the process dies without flushing):
        # Ctrl-C is its graceful stop.
        ServerKind("waitress", signal.SIGINT),
    ]
}

TARGETS = {
    "fastapi_app": "examples.fastapi_app:app",
    "starlette_app": "examples.starlette_app:app",
    "wsgi_app": "examples.wsgi_app:application",
    "asgi_app": "examples.asgi_app:application",
    "spa_api": "examples.spa.api:app",
}

MATRIX = [
    ("fastapi_app", "uvicorn"),
    ("fastapi_app", "hypercorn"),
    ("starlette_app", "uvicorn"),
    ("wsgi_app", "gunicorn"),
    ("wsgi_app", "waitress"),
    ("asgi_app", "uvicorn"),
]


@dataclass
class Running:
    url: str
    log: Path
    process: subprocess.Popen[bytes]


@contextmanager
def serve(example: str, server: str, sink: Sink, log_dir: Path) -> Iterator[Running]:
    """Run `example` under `server`; on exit stop it gracefully and check its log."""
    kind = SERVERS[server]
    started = start_process(
        server,
        partial(kind.command, TARGETS[example]),
        server_environment(sink.url),
        log_dir,
        log_name=f"{example}-{server}",
        how=kind.stop_signal,
    )  # ready once our process logged its port and answers /whoami
    process, log = started.process, started.log
    try:
        yield Running(started.url, log, process)
    finally:
        killed = stop_process(process, kind.stop_signal)
    # The failure policy hides the library's errors from responses: the log shows them.
    check_stopped(server, log, killed, how=kind.stop_signal)
    logged = read_log(log)
    assert "posthog_identity:" not in logged, logged
    # posthog's own complaints too, such as two clients for one project.
    assert "[PostHog]" not in logged, logged


@pytest.fixture(scope="module")
def server_sink() -> Iterator[Sink]:
    with Sink() as sink:
        yield sink


# ---------------------------------------------------------------------------
# The walk


def page_identity(reply: httpx.Response) -> dict[str, Any]:
    """The identity the injected snippet bootstraps posthog-js with."""
    assert reply.headers["content-type"].startswith("text/html")
    body = reply.content
    assert html5_parent_of_snippet(body) == "head"
    identity: dict[str, Any] = snippet_options(body)["identity"]
    return identity


def the_identity_cookie(reply: httpx.Response, http: httpx.Client) -> str:
    """The one identity Set-Cookie of `reply`, which the client's jar now holds."""
    [cookie] = identity_set_cookies(reply)
    assert http.cookies.get(COOKIE) == cookie.value
    return cookie.value


@dataclass(frozen=True)
class Walk:
    before: str  # the anonymous id before login
    after: str  # the anonymous id after logout


def walk(http: httpx.Client, user: str) -> Walk:
    """Anonymous visit, login, page, logout, page; checks cookies, pages and /whoami."""
    # An anonymous visit: a new anonymous id, in the cookie and in the page.
    home = http.get("/")
    assert home.status_code == 200
    first = read_cookie(the_identity_cookie(home, http))
    assert first.user_hash is None
    assert page_identity(home) == {
        "anonymous": first.anonymous_id,
        "user": None,
        "signedIn": False,
    }
    assert 'action="/login"' in home.text
    # The same id on the next page, and no Set-Cookie.
    again = http.get("/")
    assert identity_set_cookies(again) == []
    assert page_identity(again)["anonymous"] == first.anonymous_id

    # Login: the login response itself carries the linked cookie.
    reply = http.post("/login", data={"user": user})
    assert reply.status_code == 303, reply.text
    assert reply.headers["location"] == "/"
    linked = read_cookie(the_identity_cookie(reply, http))
    assert linked.anonymous_id == first.anonymous_id
    assert linked.user_hash is not None
    assert linked.linked

    # The page after login: the user, in the page and the snippet.
    page = http.get("/")
    assert page.status_code == 200
    assert identity_set_cookies(page) == []
    assert f"Signed in as <b>{html.escape(user)}</b>" in page.text
    assert page_identity(page) == {
        "anonymous": first.anonymous_id,
        "user": user,
        "signedIn": True,
    }
    assert http.get("/whoami").json() == {
        "distinct_id": user,
        "anonymous_id": first.anonymous_id,
        "user_id": user,
        "is_identified": True,
    }

    # Logout: a new anonymous id, on the logout response.
    reply = http.get("/logout")
    assert reply.status_code == 303
    assert reply.headers["location"] == "/"
    after = read_cookie(the_identity_cookie(reply, http))
    assert after.anonymous_id != first.anonymous_id
    assert after.user_hash is None
    assert not after.linked

    # The page after logout: the new anonymous id, the login form again.
    page = http.get("/")
    assert identity_set_cookies(page) == []
    assert page_identity(page) == {
        "anonymous": after.anonymous_id,
        "user": None,
        "signedIn": False,
    }
    assert 'action="/login"' in page.text
    assert http.get("/whoami").json()["distinct_id"] == after.anonymous_id
    return Walk(first.anonymous_id, after.anonymous_id)


@pytest.mark.parametrize(
    ("example", "server"), MATRIX, ids=[f"{example}-{server}" for example, server in MATRIX]
)
def test_example_walk_under_its_server(
    example: str, server: str, server_sink: Sink, tmp_path: Path
) -> None:
    # Any name: spaces, non-ASCII and HTML-special characters travel through
    # the form, the session, the events and the page (escaped).
    user = f"Zoë <{uuid.uuid4().hex[:12]}> & co"

    with (
        serve(example, server, server_sink, tmp_path) as running,
        httpx.Client(base_url=running.url, follow_redirects=False, timeout=10.0) as http,
    ):
        ids = walk(http, user)
    # The server has stopped and flushed: every event it sent has arrived.

    events = [e for e in server_sink.events() if distinct_id(e) in (ids.before, user, ids.after)]
    assert {e.get("api_key") for e in events} == {API_KEY}
    [alias] = [e for e in server_sink.events(event=ALIAS) if distinct_id(e) == user]
    assert alias["properties"]["alias"] == ids.before
    assert PERSONLESS not in alias["properties"]
    assert [e for e in events if e["event"] == ALIAS] == [alias]
    # The module-level client sends in order from one thread.
    views = [
        (distinct_id(e), "personless" if e["properties"].get(PERSONLESS) is False else "person")
        for e in events
        if e["event"] == PAGE_VIEWED
    ]
    assert views == [
        (ids.before, "personless"),  # anonymous
        (ids.before, "personless"),
        (user, "person"),  # after login: the user, even with the middleware outside auth
        (ids.after, "personless"),  # after logout: never the user again
    ]
    assert sorted(e["event"] for e in events if distinct_id(e) == user) == [ALIAS, PAGE_VIEWED]


#: Time for a server to import the app and exit; generous, on a loaded machine.
EXIT_TIMEOUT = 30.0


@pytest.mark.parametrize("example", ["fastapi_app", "starlette_app"])
def test_without_the_secret_the_example_exits_under_uvicorn_before_serving_naming_it(
    example: str, tmp_path: Path
) -> None:
    """uvicorn's default lifespan mode ("auto") takes an error raised while
    Starlette builds its middleware for "lifespan unsupported" and serves 500s:
    the documented set-up reads the settings at import instead."""
    env = server_environment("http://127.0.0.1:9")
    del env["POSTHOG_IDENTITY_SECRET"]
    command = [sys.executable, "-m", "uvicorn", TARGETS[example], "--host", "127.0.0.1"]
    log = tmp_path / "uvicorn.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [*command, "--port", str(free_port())],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        returncode = process.wait(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {EXIT_TIMEOUT}s:\n{read_log(log)}")
    finally:
        stop_process(process)
    logged = read_log(log)
    assert returncode != 0, logged
    assert "Uvicorn running on" not in logged
    assert "POSTHOG_IDENTITY_SECRET: is required" in logged


# ---------------------------------------------------------------------------
# The single-page app's API (examples/spa/api.py), called as posthog-js calls it


SPA_ORIGIN = "http://localhost:5173"  # the example's page, another site than the API
SPA_EVENT = "api called"


def uuid7() -> str:
    """A UUIDv7, as posthog-js mints its anonymous ids: milliseconds, then randomness."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # RFC 4122 variant
    return str(uuid.UUID(int=value))


def test_the_spa_api_answers_the_pages_preflight_for_posthogs_tracing_headers(
    server_sink: Sink, tmp_path: Path
) -> None:
    requested = "x-posthog-distinct-id,x-posthog-session-id,x-posthog-window-id,authorization"
    with (
        serve("spa_api", "uvicorn", server_sink, tmp_path) as running,
        httpx.Client(base_url=running.url, cookies=NoCookies(), timeout=10.0) as http,
    ):
        reply = http.options(
            "/api/hello",
            headers={
                "Origin": SPA_ORIGIN,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": requested,
            },
        )

    assert reply.status_code == 200
    # It passes through the middleware untouched: no identity cookie.
    assert identity_set_cookies(reply) == []
    assert reply.headers["access-control-allow-origin"] == SPA_ORIGIN
    allowed = {h.strip().lower() for h in reply.headers["access-control-allow-headers"].split(",")}
    assert set(requested.split(",")) <= allowed


def test_the_spa_api_joins_the_browsers_anonymous_id_then_the_user_then_the_next_id(
    server_sink: Sink, tmp_path: Path
) -> None:
    """A page on another site: no cookies, posthog-js's id in a header, a bearer token."""
    browser_id, next_id, user = uuid7(), uuid7(), f"user-{uuid.uuid4().hex[:12]}"
    session = uuid7()

    def tracing(distinct: str) -> dict[str, str]:
        return {
            "Origin": SPA_ORIGIN,
            "X-POSTHOG-DISTINCT-ID": distinct,
            "X-POSTHOG-SESSION-ID": session,
        }

    with (
        serve("spa_api", "uvicorn", server_sink, tmp_path) as running,
        httpx.Client(base_url=running.url, cookies=NoCookies(), timeout=10.0) as http,
    ):
        answers = [http.get("/api/hello", headers=tracing(browser_id)).json() for _ in range(2)]
        login = http.post("/api/login", json={"name": user}, headers=tracing(browser_id))
        assert login.status_code == 200, login.text
        bearer = {"Authorization": f"Bearer {login.json()['token']}"}
        # The page also calls posthog.identify(user): the header names the user now.
        answers.append(http.get("/api/hello", headers={**tracing(user), **bearer}).json())
        logout = http.post("/api/logout", headers={**tracing(user), **bearer})
        assert logout.status_code == 200, logout.text
        # The page dropped its token and called posthog.reset(): a new id.
        answers.append(http.get("/api/hello", headers=tracing(next_id)).json())
    # The server has stopped and flushed.

    ids = [answer["distinct_id"] for answer in answers]
    assert ids == [browser_id, browser_id, user, next_id]
    called = [e for e in server_sink.events(event=SPA_EVENT) if distinct_id(e) in ids]
    assert [(distinct_id(e), e["properties"].get("$session_id")) for e in called] == [
        (browser_id, session),
        (browser_id, session),
        (user, session),
        (next_id, session),
    ]
