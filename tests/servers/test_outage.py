"""Login links survive an ingestion outage, under real servers (uvicorn and gunicorn).

PostHog is down as a port nobody listens on (connections refused), or as a
host answering 429 to everything; it comes back as a `Sink` started on that
very port. Visitors log in meanwhile; every link must reach the sink after
the recovery, with the user as its distinct id and the visitor's anonymous id
as its alias. The server runs `tests.sites.outage` with the client the middleware
builds itself (posthog's default: three retries, about 7 s, per batch).

Most tests give the resender a short schedule; one keeps the real one through
a real 60 s outage (``POSTHOG_IDENTITY_OUTAGE_SECONDS`` sets another length,
to measure longer ones). Each waits out posthog's own retries first, so the
whole module is `slow`: it runs once, in `nox -s outage`, not per Python.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from posthog_identity.client import FLUSH_TIMEOUT
from posthog_identity.testing import Sink
from tests.helpers.faults import FaultyHost
from tests.helpers.servers import (
    NoCookies,
    Started,
    app_command,
    check_stopped,
    free_port,
    read_log,
    server_environment,
    start_process,
    stop_process,
)
from tests.helpers.wire import read_cookie
from tests.sites.outage import POLICY_VARIABLE

ALIAS = "$create_alias"
LOGINS = 10
#: The resender's schedule in the fast tests: first retry after 0.2 s, at most 1 s apart.
FAST = "0.2,1,10000"
#: Every link must arrive within this long of PostHog's recovery.
RECOVERY_BOUND = 90.0
OUTAGE = float(os.environ.get("POSTHOG_IDENTITY_OUTAGE_SECONDS", "60"))
#: Beyond the flush bound, what a server's own shutdown may take.
EXIT_SLACK = 5.0

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])]


def start(kind: str, host: str, log_dir: Path, policy: str | None = FAST) -> Started:
    env = server_environment(host)
    if policy is not None:
        env[POLICY_VARIABLE] = policy
    return start_process(
        kind, partial(app_command, kind, module="tests.sites.outage"), env, log_dir
    )


@pytest.fixture
def stopping() -> Iterator[list[Started]]:
    """Servers to stop at the end of the test, checked for a clean shutdown."""
    started: list[Started] = []
    yield started
    for server in started:
        killed = stop_process(server.process)
        check_stopped("server", server.log, killed)


def log_in(url: str, user: str) -> tuple[str, str]:
    """A new visitor logs in as `user`; returns the link it makes: (user, anonymous id)."""
    with httpx.Client(base_url=url, timeout=10.0, cookies=NoCookies()) as http:
        cookie = http.get("/whoami").cookies["ph_identity"]
        reply = http.get(
            "/login", params={"user": user}, headers={"Cookie": f"ph_identity={cookie}"}
        )
        reply.raise_for_status()
    return user, read_cookie(cookie).anonymous_id


def log_in_many(url: str, count: int = LOGINS) -> list[tuple[str, str]]:
    prefix = os.urandom(4).hex()
    return [log_in(url, f"user-{prefix}-{i}") for i in range(count)]


def pending(url: str) -> int:
    return int(httpx.get(f"{url}/pending", timeout=10.0).text)


def wait_pending(url: str, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (kept := pending(url)) < count:
        assert time.monotonic() < deadline, f"{kept} of {count} failed links kept"
        time.sleep(0.1)


def links(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["distinct_id"], e["properties"]["alias"]) for e in events]


def arrived(sink: Sink, expected: list[tuple[str, str]], timeout: float) -> list[dict[str, Any]]:
    """The links in `expected` that reached the sink within `timeout`."""
    wanted = set(expected)
    with contextlib.suppress(TimeoutError):
        sink.wait_for(lambda events: wanted <= set(links(events)), event=ALIAS, timeout=timeout)
    return [e for e in sink.events(ALIAS) if (e["distinct_id"], e["properties"]["alias"]) in wanted]


def check_wire(events: list[dict[str, Any]], expected: list[tuple[str, str]]) -> None:
    """Each link once per uuid, in PostHog's direction, in the order the visitors logged in."""
    first_seen: dict[tuple[str, str], str] = {}
    for event in events:
        pair = (event["distinct_id"], event["properties"]["alias"])
        assert first_seen.setdefault(pair, event["uuid"]) == event["uuid"], (
            "a repeat is the same message"
        )
        assert event["properties"]["distinct_id"] == event["distinct_id"]
        assert "$process_person_profile" not in event["properties"]
    assert list(first_seen) == expected


def test_links_made_during_an_outage_arrive_once_posthog_is_back(
    kind: str, tmp_path: Path, stopping: list[Started]
) -> None:
    port = free_port()
    server = start(kind, f"http://127.0.0.1:{port}", tmp_path)
    stopping.append(server)
    expected = log_in_many(server.url)
    wait_pending(server.url, LOGINS)

    with Sink(port=port) as sink:
        events = arrived(sink, expected, RECOVERY_BOUND)
    check_wire(events, expected)
    assert pending(server.url) == 0


def test_links_made_during_a_429_storm_arrive_once_it_ends(
    kind: str, tmp_path: Path, stopping: list[Started]
) -> None:
    storm = FaultyHost("429")
    try:
        server = start(kind, storm.url, tmp_path)
        stopping.append(server)
        expected = log_in_many(server.url)
        wait_pending(server.url, LOGINS)
    finally:
        storm.close()

    with Sink(port=int(storm.url.rsplit(":", 1)[1])) as sink:
        events = arrived(sink, expected, RECOVERY_BOUND)
    check_wire(events, expected)


def test_pending_links_are_bounded_dropping_the_oldest_with_a_count(
    kind: str, tmp_path: Path, stopping: list[Started]
) -> None:
    port = free_port()
    server = start(kind, f"http://127.0.0.1:{port}", tmp_path, policy="0.2,1,4")
    stopping.append(server)
    expected = log_in_many(server.url)
    deadline = time.monotonic() + 60
    while (dropped := count_dropped(read_log(server.log))) < LOGINS - 4:
        assert time.monotonic() < deadline, f"{dropped} dropped:\n{read_log(server.log)}"
        time.sleep(0.1)
    assert dropped == LOGINS - 4
    assert pending(server.url) == 4

    with Sink(port=port) as sink:
        events = arrived(sink, expected[-4:], RECOVERY_BOUND)
        check_wire(events, expected[-4:])
        assert set(links(sink.events(ALIAS))) == set(expected[-4:]), "the newest are kept"


def count_dropped(log: str) -> int:
    return sum(int(n) for n in re.findall(r"dropped the (\d+) oldest login link", log))


def test_a_shutdown_during_an_outage_is_bounded_and_counts_the_lost_links(
    kind: str, tmp_path: Path
) -> None:
    port = free_port()
    server = start(kind, f"http://127.0.0.1:{port}", tmp_path)
    expected = log_in_many(server.url, 3)
    wait_pending(server.url, len(expected))

    started = time.monotonic()
    killed = stop_process(server.process, signal.SIGTERM)
    took = time.monotonic() - started

    check_stopped(kind, server.log, killed)
    assert took < FLUSH_TIMEOUT + EXIT_SLACK
    assert "3 login link(s) not yet accepted by PostHog at shutdown are lost" in read_log(
        server.log
    )


def test_links_made_during_a_long_outage_arrive_within_90_s_of_recovery(
    kind: str, tmp_path: Path, stopping: list[Started]
) -> None:
    """The real schedule, a real outage (60 s by default): nothing here is sped up."""
    port = free_port()
    server = start(kind, f"http://127.0.0.1:{port}", tmp_path, policy=None)
    stopping.append(server)
    down_since = time.monotonic()
    expected = log_in_many(server.url)
    time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_since)))

    with Sink(port=port) as sink:
        back = time.monotonic()
        events = arrived(sink, expected, RECOVERY_BOUND)
        took = time.monotonic() - back
    got = len({(e["distinct_id"], e["properties"]["alias"]) for e in events})
    print(f"{kind}: {OUTAGE:.0f} s outage: {got}/{LOGINS} links within {took:.1f} s of recovery")
    assert got == LOGINS, f"{got}/{LOGINS} links arrived within {RECOVERY_BOUND} s of recovery"
    check_wire(events, expected)
