"""The login link on the wire, and the per-process memory that sends it once."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import posthog

from posthog_identity.identity import Link
from posthog_identity.linking import RecentLinks, send_link

if TYPE_CHECKING:
    from posthog_identity.testing import Sink

ANONYMOUS = "0f8fad5b-d9cb-469f-a165-70867728950e"


def test_the_link_keeps_the_user_and_merges_the_anonymous_id(
    client: posthog.Client, sink: Sink
) -> None:
    send_link(client, Link(user_id="user-42", anonymous_id=ANONYMOUS))
    (event,) = sink.wait_for(event="$create_alias", count=1)
    assert event["distinct_id"] == "user-42"
    assert event["properties"]["alias"] == ANONYMOUS
    assert event["properties"]["distinct_id"] == "user-42"


def test_the_link_never_carries_the_personless_tag(client: posthog.Client, sink: Sink) -> None:
    with posthog.new_context(fresh=True, capture_exceptions=False):
        posthog.identify_context(ANONYMOUS)
        posthog.tag("$process_person_profile", False)
        posthog.set_context_session("session-1")
        send_link(client, Link("user-42", ANONYMOUS))
    (event,) = sink.wait_for(event="$create_alias", count=1)
    assert "$process_person_profile" not in event["properties"]
    assert "$session_id" not in event["properties"]


def test_a_link_is_remembered_once() -> None:
    links = RecentLinks()
    assert links.first_time(Link("u", "a"))
    assert not links.first_time(Link("u", "a"))
    assert links.first_time(Link("u", "b"))
    assert links.first_time(Link("v", "a"))


def test_the_memory_is_bounded_and_forgets_the_oldest() -> None:
    links = RecentLinks(capacity=2)
    links.first_time(Link("u", "1"))
    links.first_time(Link("u", "2"))
    links.first_time(Link("u", "1"))  # refreshed: now the newest
    links.first_time(Link("u", "3"))
    assert len(links) == 2
    assert links.first_time(Link("u", "2")), "the least recent pair was forgotten"
    assert not links.first_time(Link("u", "3"))


def test_concurrent_callers_send_a_pair_exactly_once() -> None:
    links = RecentLinks()
    barrier = threading.Barrier(16)
    results: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        first = links.first_time(Link("u", "same"))
        with lock:
            results.append(first)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1
