"""What a sink keeps and how a test reads it: events filtered, copied and waited for,
the JSONL file and callbacks, and the side traffic kept apart from the events.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from posthog_identity.testing import Sink
from tests.helpers.sink import (
    DEFINITIONS_PATH,
    EVENT,
    FLAGS_REQUEST,
    JS_EVENT,
    KEY,
    OTHER,
    PERSONAL,
    ask_definitions,
    ask_flags,
    gzip_js,
    post_json,
    send,
)

# -- inspecting events ------------------------------------------------------------


def test_events_filter_by_name_and_distinct_id(sink: Sink) -> None:
    post_json(sink.url + "/e/", [EVENT, OTHER, JS_EVENT])

    assert sink.events("login") == [OTHER]
    assert sink.events(distinct_id="user-1") == [EVENT]
    assert sink.events(distinct_id="anon-1") == [JS_EVENT]
    assert sink.events("signup", distinct_id="user-2") == []


def test_events_reads_the_legacy_dollar_distinct_id(sink: Sink) -> None:
    event = {"event": "x", "properties": {"$distinct_id": "anon-2"}}
    post_json(sink.url + "/e/", event)
    assert sink.events(distinct_id="anon-2") == [event]


def test_events_returns_copies(sink: Sink) -> None:
    post_json(sink.url + "/e/", EVENT)
    sink.events()[0]["properties"]["plan"] = "changed"
    assert sink.events() == [EVENT]


def test_clear_forgets_events(sink: Sink) -> None:
    post_json(sink.url + "/e/", EVENT)
    sink.clear()
    assert sink.events() == []


def test_wait_for_returns_matching_events_once_they_arrive(sink: Sink) -> None:
    poster = threading.Thread(target=post_json, args=(sink.url + "/e/", [OTHER, EVENT, EVENT]))
    poster.start()
    try:
        found = sink.wait_for(count=2, event="signup")
    finally:
        poster.join()
    assert found == [EVENT, EVENT]


def test_wait_for_without_conditions_waits_for_one_event(sink: Sink) -> None:
    post_json(sink.url + "/e/", OTHER)
    assert sink.wait_for() == [OTHER]


def test_wait_for_checks_the_predicate(sink: Sink) -> None:
    post_json(sink.url + "/e/", [EVENT, OTHER])

    def has_login(events: list[dict[str, Any]]) -> bool:
        return any(e["event"] == "login" for e in events)

    assert sink.wait_for(has_login) == [EVENT, OTHER]


def test_wait_for_predicate_cannot_change_what_is_kept(sink: Sink) -> None:
    post_json(sink.url + "/e/", EVENT)

    def meddle(events: list[dict[str, Any]]) -> bool:
        events[0]["event"] = "meddled"
        return True

    sink.wait_for(meddle)
    assert sink.events() == [EVENT]


def test_wait_for_timeout_lists_what_arrived(sink: Sink) -> None:
    post_json(sink.url + "/e/", OTHER)

    with pytest.raises(TimeoutError, match="at least 2 event") as info:
        sink.wait_for(count=2, event="login", timeout=0.05)
    assert "('login', 'user-2')" in str(info.value)


def test_wait_for_timeout_with_nothing_arrived(sink: Sink) -> None:
    with pytest.raises(TimeoutError, match=r"at least 1 event\(s\) at .*; 0 event"):
        sink.wait_for(count=1, timeout=0.05)


def test_wait_for_timeout_names_the_predicate(sink: Sink) -> None:
    with pytest.raises(TimeoutError, match="named 'x' matching the predicate"):
        sink.wait_for(lambda events: False, event="x", timeout=0.05)


# -- side outputs -----------------------------------------------------------------


def test_jsonl_gets_one_flushed_line_per_event(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with Sink(jsonl_path=path) as sink:
        post_json(sink.url + "/batch/", {"api_key": KEY, "batch": [EVENT, OTHER]})
        lines = path.read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == sink.events()


def test_jsonl_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"event": "earlier"}\n', encoding="utf-8")
    with Sink(jsonl_path=str(path)) as sink:
        post_json(sink.url + "/e/", EVENT)
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2


def test_on_event_gets_each_event() -> None:
    seen: list[dict[str, Any]] = []
    with Sink(on_event=seen.append) as sink:
        post_json(sink.url + "/e/", [EVENT, OTHER])
    assert seen == [EVENT, OTHER]


def test_on_event_errors_are_logged_and_do_not_break_the_sink(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def explode(event: dict[str, Any]) -> None:
        raise ValueError("callback bug")

    with Sink(on_event=explode) as sink:
        first = post_json(sink.url + "/e/", EVENT)
        second = post_json(sink.url + "/e/", OTHER)
        assert sink.events() == [EVENT, OTHER]

    assert (first.status, second.status) == (200, 200)
    errors = [r for r in caplog.records if r.name == "posthog_identity.testing"]
    assert [r.levelno for r in errors] == [logging.ERROR, logging.ERROR]
    assert "callback bug" in caplog.text


# -- flags requests ---------------------------------------------------------------


def test_flags_requests_are_not_events(sink: Sink) -> None:
    ask_flags(sink)
    assert sink.events() == []


def test_flag_requests_returns_copies(sink: Sink) -> None:
    ask_flags(sink)
    sink.flag_requests()[0]["distinct_id"] = "changed"
    assert sink.flag_requests() == [FLAGS_REQUEST]


def test_on_flag_request_gets_each_request() -> None:
    seen: list[dict[str, Any]] = []
    with Sink(on_flag_request=seen.append) as sink:
        ask_flags(sink)
    assert seen == [FLAGS_REQUEST]


def test_on_flag_request_errors_are_logged_and_the_answer_stands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def explode(request: dict[str, Any]) -> None:
        raise ValueError("callback bug")

    with Sink(on_flag_request=explode) as sink:
        reply = ask_flags(sink)
        assert sink.flag_requests() == [FLAGS_REQUEST]

    assert reply.json()["flags"] == {}
    assert "callback bug" in caplog.text


# -- flag definitions requests ----------------------------------------------------


def test_definition_requests_are_recorded_with_their_status(defined: Sink) -> None:
    ask_definitions(defined)
    ask_definitions(defined, key=None, etag='"x"')

    assert defined.definition_requests() == [
        {
            "path": DEFINITIONS_PATH,
            "token": KEY,
            "personal_api_key": PERSONAL,
            "if_none_match": None,
            "status": 200,
        },
        {
            "path": DEFINITIONS_PATH,
            "token": KEY,
            "personal_api_key": None,
            "if_none_match": '"x"',
            "status": 401,
        },
    ]


def test_definition_requests_returns_copies_and_clear_forgets_them(defined: Sink) -> None:
    ask_definitions(defined)
    defined.definition_requests()[0]["status"] = 999
    assert defined.definition_requests()[0]["status"] == 200

    defined.clear()
    assert defined.definition_requests() == []


# -- remote config requests -------------------------------------------------------


def test_config_requests_record_their_tokens(sink: Sink) -> None:
    send(sink.url + "/array/phc_one/config.js", method="GET")
    send(sink.url + "/array/phc_two/config/", method="GET")
    assert sink.config_tokens() == ["phc_one", "phc_two"]


# -- session recordings -----------------------------------------------------------


def test_recordings_are_counted_not_kept(sink: Sink) -> None:
    snapshot = {"event": "$snapshot", "properties": {"distinct_id": "anon-1"}}
    body = gzip_js({"api_key": KEY, "batch": [snapshot]})
    for _ in range(2):
        reply = send(sink.url + "/s/?ver=1.449.2", body, headers={"Content-Type": "text/plain"})
        assert (reply.status, reply.json()) == (200, {"status": 1})

    assert sink.recording_count() == 2
    assert sink.events() == []


def test_clear_forgets_flags_configs_and_recordings(sink: Sink) -> None:
    ask_flags(sink)
    send(sink.url + "/array/phc_test/config", method="GET")
    send(sink.url + "/s/", b"{}")
    sink.clear()
    assert (sink.flag_requests(), sink.config_tokens(), sink.recording_count()) == ([], [], 0)
