"""Login links that failed to reach PostHog are kept and sent again.

posthog's real client sends over HTTP: first to a port nobody listens on (or a
host answering 429), then a `Sink` starts on that very port, as PostHog coming
back. The resender follows a short schedule here (`FAST`) so the tests run in
seconds; tests/test_outage.py runs the real one under real servers.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import posthog
import pytest

from posthog_identity import resend
from posthog_identity.client import FLUSH_TIMEOUT, flush, process_client
from posthog_identity.identity import Link
from posthog_identity.linking import send_link
from posthog_identity.resend import LinkResender, Policy, protect, resender_for
from posthog_identity.settings import Settings
from posthog_identity.testing import Sink
from tests.helpers.faults import FaultyHost
from tests.helpers.project import API_KEY, SECRET
from tests.helpers.servers import free_port

FAST = Policy(first_delay=0.05, max_delay=0.2)
ALIAS = "$create_alias"
ANONYMOUS = [f"0f8fad5b-d9cb-469f-a165-7086772895{i:02d}" for i in range(20)]


@pytest.fixture(autouse=True)
def _fast_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resend, "POLICY", FAST)


@pytest.fixture
def down() -> str:
    """The URL of an ingestion host that refuses connections: nothing listens there."""
    return f"http://127.0.0.1:{free_port()}"


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def failing_client(host: str, **options: Any) -> posthog.Client:
    """posthog's client that gives up on a batch at once (no retries of its own)."""
    return posthog.Client(API_KEY, host=host, flush_interval=0.05, max_retries=0, **options)


@pytest.fixture
def clients() -> Iterator[list[posthog.Client]]:
    made: list[posthog.Client] = []
    yield made
    for client in made:
        resender = resender_for(client)
        if resender is not None:
            resender.close(0)
        client.shutdown()


def wait_kept(client: posthog.Client, count: int, timeout: float = 20.0) -> LinkResender:
    resender = resender_for(client)
    assert resender is not None
    deadline = time.monotonic() + timeout
    while len(resender) < count:
        assert time.monotonic() < deadline, f"{len(resender)} of {count} links kept"
        time.sleep(0.02)
    return resender


def wait_drained(client: posthog.Client, timeout: float = 20.0) -> None:
    """Until the resender keeps no link: it lets go of one once PostHog's answer is
    back, which is after the sink has recorded the event."""
    resender = resender_for(client)
    assert resender is not None
    deadline = time.monotonic() + timeout
    while len(resender):
        assert time.monotonic() < deadline, f"{len(resender)} links still kept"
        time.sleep(0.02)


def link(i: int) -> Link:
    return Link(user_id=f"user-{i}", anonymous_id=ANONYMOUS[i])


def pairs(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["distinct_id"], e["properties"]["alias"]) for e in events]


def test_a_link_that_failed_arrives_once_posthog_is_back_with_its_original_uuid_and_time(
    down: str, clients: list[posthog.Client]
) -> None:
    kept_uuids: list[str] = []
    client = failing_client(
        down, on_error=lambda e, batch: kept_uuids.extend(m["uuid"] for m in batch)
    )
    clients.append(client)
    protect(client)
    send_link(client, link(0))
    wait_kept(client, 1)
    sent_before = time.time()

    with Sink(port=port_of(down)) as sink:
        (event,) = sink.wait_for(event=ALIAS, count=1)

    assert pairs([event]) == [("user-0", ANONYMOUS[0])]
    assert event["properties"]["distinct_id"] == "user-0"
    assert [event["uuid"]] == kept_uuids, "the very message posthog failed to send"
    assert time.mktime(time.strptime(event["timestamp"][:19], "%Y-%m-%dT%H:%M:%S")) <= sent_before
    wait_drained(client)


def test_the_apps_own_on_error_still_runs(down: str, clients: list[posthog.Client]) -> None:
    seen: list[str] = []
    client = failing_client(down, on_error=lambda e, batch: seen.extend(m["event"] for m in batch))
    clients.append(client)
    protect(client)
    send_link(client, link(0))
    client.capture("Page Viewed", distinct_id="user-0")
    wait_kept(client, 1)
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(seen) == [ALIAS, "Page Viewed"]


def test_only_links_are_kept_other_events_keep_posthogs_behaviour(
    down: str, clients: list[posthog.Client]
) -> None:
    client = failing_client(down)
    clients.append(client)
    protect(client)
    client.capture("Page Viewed", distinct_id="user-0")
    send_link(client, link(0))
    wait_kept(client, 1)

    with Sink(port=port_of(down)) as sink:
        sink.wait_for(event=ALIAS, count=1)
        client.capture("Marker", distinct_id="user-0")
        sink.wait_for(event="Marker", count=1)
        assert [e["event"] for e in sink.events()] == [ALIAS, "Marker"]


def test_links_are_resent_in_the_order_they_were_first_sent(
    down: str, clients: list[posthog.Client]
) -> None:
    client = failing_client(down)
    clients.append(client)
    protect(client)
    for i in range(8):
        send_link(client, link(i))
    wait_kept(client, 8)

    with Sink(port=port_of(down)) as sink:
        events = sink.wait_for(event=ALIAS, count=8)
    assert pairs(events) == [(f"user-{i}", ANONYMOUS[i]) for i in range(8)]


def test_a_429_storm_delays_links_without_losing_them(clients: list[posthog.Client]) -> None:
    storm = FaultyHost("429")
    try:
        client = failing_client(storm.url)
        clients.append(client)
        protect(client)
        for i in range(3):
            send_link(client, link(i))
        resender = wait_kept(client, 3)
        before = storm.connections
        assert storm.reached(before), "the resender keeps asking during the storm"
        assert len(resender) == 3
    finally:
        storm.close()
    with Sink(port=port_of(storm.url)) as sink:
        events = sink.wait_for(event=ALIAS, count=3)
    assert pairs(events) == [(f"user-{i}", ANONYMOUS[i]) for i in range(3)]


def test_the_middlewares_own_client_keeps_its_links(
    down: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(posthog, "default_client", None)
    settings = Settings(secrets=(SECRET,), api_key=API_KEY, host=down)
    client = process_client(settings)
    assert client is not None
    try:
        send_link(client, link(0))
        # posthog's default client waits up to 5 s to batch; the app's flush sends at
        # once and returns when posthog's own retries (1 + 2 + 4 s) have given up.
        client.flush(timeout_seconds=30)
        wait_kept(client, 1, timeout=30)
        with Sink(port=port_of(down)) as sink:
            (event,) = sink.wait_for(event=ALIAS, count=1)
        assert pairs([event]) == [("user-0", ANONYMOUS[0])]
    finally:
        client.shutdown()


def test_pending_links_are_bounded_dropping_the_oldest_with_a_count(
    down: str,
    clients: list[posthog.Client],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(resend, "POLICY", Policy(max_pending=3, first_delay=60))
    client = failing_client(down, flush_at=1)
    clients.append(client)
    protect(client)
    for i in range(5):
        send_link(client, link(i))
        wait_kept(client, min(i + 1, 3))
    resender = resender_for(client)
    assert resender is not None
    deadline = time.monotonic() + 5
    while dropped(caplog) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)

    assert dropped(caplog) == 2
    assert pairs([kept.message for kept in resender._pending]) == [
        (f"user-{i}", ANONYMOUS[i]) for i in (2, 3, 4)
    ]


def dropped(caplog: pytest.LogCaptureFixture) -> int:
    return sum(
        int(m.group(1))
        for record in caplog.records
        if (m := re.search(r"dropped the (\d+) oldest login link", record.getMessage()))
    )


def test_links_past_their_age_are_dropped_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    resender = LinkResender(policy=Policy(max_age=0.0, first_delay=60))
    resender.keep([{"event": ALIAS, "distinct_id": "u", "properties": {"alias": "a"}}])
    time.sleep(0.05)
    assert resender._head() == []
    assert "dropped 1 login link(s) PostHog did not accept within 0 s" in caplog.text
    resender.close(0)


def test_a_shutdown_during_an_outage_waits_no_longer_than_the_flush_bound_and_counts_the_lost(
    down: str, clients: list[posthog.Client], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="posthog_identity")
    client = failing_client(down)
    clients.append(client)
    protect(client)
    for i in range(4):
        send_link(client, link(i))
    wait_kept(client, 4)

    started = time.monotonic()
    flush([client])
    assert time.monotonic() - started < FLUSH_TIMEOUT + 1.0
    assert "4 login link(s) not yet accepted by PostHog at shutdown are lost" in caplog.text

    send_link(client, link(5))
    deadline = time.monotonic() + 5
    while "failed to reach PostHog after shutdown" not in caplog.text:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert "1 login link(s) failed to reach PostHog after shutdown began and are lost" in (
        caplog.text
    )


def test_a_shutdown_delivers_what_it_can_within_the_bound(
    down: str, clients: list[posthog.Client], caplog: pytest.LogCaptureFixture
) -> None:
    client = failing_client(down)
    clients.append(client)
    protect(client)
    resender = resender_for(client)
    assert resender is not None
    resender.policy = Policy(first_delay=60)  # the thread would wait a minute
    send_link(client, link(0))
    wait_kept(client, 1)
    with Sink(port=port_of(down)) as sink:
        flush([client])
        assert pairs(sink.events(ALIAS)) == [("user-0", ANONYMOUS[0])]
    assert "lost" not in caplog.text


def test_a_link_posthog_refuses_for_good_is_dropped_with_an_error(
    clients: list[posthog.Client], caplog: pytest.LogCaptureFixture
) -> None:
    with Sink() as sink:
        client = failing_client(sink.url)
        clients.append(client)
        resender = protect(client)
        assert resender is not None
        # A message PostHog cannot take: no distinct id (the sink answers 400, as PostHog).
        resender.keep([{"event": ALIAS, "properties": {"alias": "a"}, "uuid": "x"}])
        deadline = time.monotonic() + 5
        while len(resender):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert "PostHog refused 1 login link(s)" in caplog.text


def test_a_client_is_protected_once(clients: list[posthog.Client]) -> None:
    client = failing_client("http://127.0.0.1:9")
    clients.append(client)
    first = protect(client)
    assert first is not None
    assert protect(client) is first
    assert first.previous is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_starts_with_no_pending_links(
    down: str, clients: list[posthog.Client]
) -> None:
    client = failing_client(down)
    clients.append(client)
    protect(client)
    send_link(client, link(0))
    resender = wait_kept(client, 1)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        os._exit(0 if len(resender) == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(resender) == 1, "the parent keeps its links"
