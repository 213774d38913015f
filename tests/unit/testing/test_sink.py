"""The local sink: real posthog clients deliver to it, bad requests never stop it."""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import Message
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from posthog.client import Client

from posthog_identity.testing import (
    DEFAULT_MAX_BODY_SIZE,
    EXAMPLE_FLAG_DEFINITIONS,
    Sink,
    format_event,
)
from posthog_identity.testing.cli import main

KEY = "phc_test"
EVENT = {"event": "signup", "distinct_id": "user-1", "properties": {"plan": "pro"}}
OTHER = {"event": "login", "distinct_id": "user-2", "properties": {}}


class Reply(NamedTuple):
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def send(
    url: str,
    body: bytes | None = None,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> Reply:
    request = urllib.request.Request(url, body, headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.headers, error.read())


def post_json(url: str, payload: Any, **headers: str) -> Reply:
    return send(url, json.dumps(payload).encode(), headers=headers)


def send_raw(sink: Sink, data: bytes, *, half_close: bool = False) -> Reply:
    """Speak HTTP by hand, for requests urllib refuses to make."""
    host, port = urllib.parse.urlsplit(sink.url).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(data)
        if half_close:
            conn.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = Message()
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name] = value.strip()
    return Reply(int(status_line.split()[1]), headers, body)


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as running:
        yield running


@contextmanager
def client(sink: Sink, **options: Any) -> Iterator[Client]:
    ph = Client(KEY, host=sink.url, **options)
    try:
        yield ph
    finally:
        ph.shutdown()


@pytest.fixture(autouse=True)
def _default_capture_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    # "Default configuration" must not depend on the developer's environment.
    monkeypatch.delenv("POSTHOG_CAPTURE_MODE", raising=False)
    monkeypatch.delenv("POSTHOG_CAPTURE_COMPRESSION", raising=False)


# -- the real posthog client ---------------------------------------------------


def test_sync_capture_arrives_with_its_fields(sink: Sink) -> None:
    with client(sink, sync_mode=True) as ph:
        uuid = ph.capture("signup", distinct_id="user-1", properties={"plan": "pro"})

    [event] = sink.events()
    assert event["uuid"] == uuid  # capture() returns None when the upload failed
    assert event["event"] == "signup"
    assert event["distinct_id"] == "user-1"
    assert event["properties"]["plan"] == "pro"
    assert event["properties"]["$lib"] == "posthog-python"
    assert event["api_key"] == KEY
    assert set(event) == {
        "event",
        "distinct_id",
        "properties",
        "uuid",
        "timestamp",
        "api_key",
    }


def test_sync_alias_arrives_as_create_alias(sink: Sink) -> None:
    with client(sink, sync_mode=True) as ph:
        uuid = ph.alias(previous_id="user-1", distinct_id="anon-1")

    [event] = sink.events()
    assert event["uuid"] == uuid
    assert event["event"] == "$create_alias"
    assert event["distinct_id"] == "user-1"
    assert event["properties"]["distinct_id"] == "user-1"
    assert event["properties"]["alias"] == "anon-1"


def test_async_client_delivers_in_order_on_flush(sink: Sink) -> None:
    errors: list[Exception] = []
    with client(sink, on_error=lambda error, _batch: errors.append(error)) as ph:
        ph.capture("signup", distinct_id="user-1", properties={"plan": "pro"})
        ph.alias(previous_id="user-1", distinct_id="anon-1")
        ph.flush()
        signup, alias = sink.wait_for(count=2)

    assert errors == []
    assert (signup["event"], signup["distinct_id"]) == ("signup", "user-1")
    assert signup["properties"]["plan"] == "pro"
    assert (alias["event"], alias["distinct_id"]) == ("$create_alias", "user-1")
    assert alias["properties"]["alias"] == "anon-1"


def test_async_client_delivers_on_shutdown(sink: Sink) -> None:
    with client(sink) as ph:
        ph.capture("signup", distinct_id="user-1")

    assert [e["event"] for e in sink.wait_for(count=1)] == ["signup"]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"gzip": True},
        {"capture_mode": "v1"},
        {"capture_mode": "v1", "capture_compression": "gzip"},
        {"capture_mode": "v1", "capture_compression": "deflate"},
    ],
    ids=["batch", "batch-gzip", "v1", "v1-gzip", "v1-deflate"],
)
def test_every_client_wire_format_arrives(sink: Sink, options: dict[str, Any]) -> None:
    with client(sink, sync_mode=True, **options) as ph:
        uuid = ph.capture("signup", distinct_id="user-1", properties={"plan": "pro"})

    [event] = sink.events()
    assert uuid is not None
    assert event["uuid"] == uuid
    assert (event["event"], event["distinct_id"]) == ("signup", "user-1")
    assert event["properties"]["plan"] == "pro"
    assert event["api_key"] == KEY


# -- raw requests that are accepted ----------------------------------------------


def base64_form(payload: Any) -> bytes:
    encoded = base64.b64encode(json.dumps(payload).encode()).decode()
    return b"data=" + urllib.parse.quote(encoded, safe="").encode()


JS_EVENT = {
    "event": "$pageview",
    "properties": {"distinct_id": "anon-1", "token": KEY, "$current_url": "/"},
}

ACCEPTED = [
    pytest.param("/e/", json.dumps(EVENT).encode(), {}, [EVENT], id="one-event"),
    pytest.param("/e/", json.dumps([EVENT, OTHER]).encode(), {}, [EVENT, OTHER], id="list"),
    pytest.param("/capture/", json.dumps({"batch": [EVENT]}).encode(), {}, [EVENT], id="batch"),
    pytest.param(
        "/i/v0/e/",
        json.dumps({"api_key": KEY, "batch": [EVENT]}).encode(),
        {},
        [{**EVENT, "api_key": KEY}],
        id="batch-with-api-key",
    ),
    pytest.param(
        "/e/",
        json.dumps({**EVENT, "api_key": "phc_own"}).encode(),
        {},
        [{**EVENT, "api_key": "phc_own"}],
        id="event-with-api-key",
    ),
    pytest.param("/e/", json.dumps([]).encode(), {}, [], id="empty-list"),
    pytest.param(
        "/e/?compression=gzip-js&ver=1.449.2",
        gzip.compress(json.dumps([JS_EVENT]).encode()),
        {"Content-Type": "text/plain"},
        [JS_EVENT],
        id="posthog-js-gzip",
    ),
    pytest.param(
        "/e/?compression=base64",
        base64_form([JS_EVENT]),
        {"Content-Type": "application/x-www-form-urlencoded"},
        [JS_EVENT],
        id="posthog-js-beacon-base64",
    ),
    pytest.param(
        "/batch",
        gzip.compress(json.dumps({"batch": [EVENT]}).encode()),
        {"Content-Encoding": "gzip"},
        [EVENT],
        id="gzip-no-trailing-slash",
    ),
    pytest.param(
        "/batch/",
        gzip.compress(json.dumps({"batch": [EVENT]}).encode()),
        {},
        [EVENT],
        id="gzip-recognised-by-magic",
    ),
    pytest.param(
        "/i/v0/ai/batch/",
        zlib.compress(json.dumps({"batch": [EVENT]}).encode()),
        {"Content-Encoding": "Deflate"},
        [EVENT],
        id="ai-lane-deflate",
    ),
    pytest.param(
        "/i/v1/analytics/events",
        json.dumps({"batch": [EVENT]}).encode(),
        {"Authorization": "Basic abc"},
        [EVENT],
        id="v1-without-bearer",
    ),
]


@pytest.mark.parametrize(("path", "body", "headers", "expected"), ACCEPTED)
def test_accepted_bodies_keep_the_events_as_sent(
    sink: Sink, path: str, body: bytes, headers: dict[str, str], expected: list[Any]
) -> None:
    reply = send(sink.url + path, body, headers=headers)

    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert sink.events() == expected


def test_legacy_endpoints_answer_status_1(sink: Sink) -> None:
    assert post_json(sink.url + "/batch/", {"batch": [EVENT]}).json() == {"status": 1}


def test_v1_answers_per_event_results_and_records_the_bearer_key(sink: Sink) -> None:
    event = {**EVENT, "uuid": "0190a7f2-0000-7000-8000-000000000001"}
    reply = post_json(
        sink.url + "/i/v1/analytics/events",
        {"created_at": "2026-01-01T00:00:00Z", "batch": [event]},
        Authorization=f"Bearer {KEY}",
    )

    assert reply.json() == {"results": {event["uuid"]: {"result": "ok"}}}
    assert sink.events() == [{**event, "api_key": KEY}]


# -- raw requests that are rejected --------------------------------------------


REJECTED = [
    pytest.param("/e/", b"{not json", {}, 400, id="malformed-json"),
    pytest.param("/e/", b"\xff\xfe\x00", {}, 400, id="not-utf8"),
    pytest.param("/e/", b"[" * 100_000, {}, 400, id="deeply-nested"),
    pytest.param("/e/", b"42", {}, 400, id="not-an-event"),
    pytest.param("/e/", b'{"batch": {}}', {}, 400, id="batch-not-a-list"),
    pytest.param("/e/", json.dumps([EVENT, 1]).encode(), {}, 400, id="item-not-object"),
    pytest.param("/e/", json.dumps([EVENT, {"distinct_id": "u"}]).encode(), {}, 400, id="no-name"),
    pytest.param(
        "/e/",
        json.dumps({"event": "x", "properties": {}}).encode(),
        {},
        400,
        id="no-id",
    ),
    pytest.param(
        "/e/",
        json.dumps({"event": "x", "distinct_id": "u", "properties": []}).encode(),
        {},
        400,
        id="properties-not-object",
    ),
    pytest.param("/batch/", b"not gzip", {"Content-Encoding": "gzip"}, 400, id="bad-gzip"),
    pytest.param(
        "/batch/",
        gzip.compress(json.dumps([EVENT]).encode())[:-12],
        {"Content-Encoding": "gzip"},
        400,
        id="truncated-gzip",
    ),
    pytest.param(
        "/batch/",
        gzip.compress(json.dumps([EVENT]).encode()) + b"junk",
        {"Content-Encoding": "gzip"},
        400,
        id="gzip-trailing-data",
    ),
    pytest.param("/e/?compression=base64", b"data=abcde", {}, 400, id="bad-base64"),
    pytest.param("/e/?compression=base64", b"\xff", {}, 400, id="base64-not-ascii"),
    pytest.param("/batch/", b"{}", {"Content-Encoding": "br"}, 415, id="brotli"),
    pytest.param("/nope/", json.dumps(EVENT).encode(), {}, 404, id="unknown-path"),
]


@pytest.mark.parametrize(("path", "body", "headers", "status"), REJECTED)
def test_rejected_bodies_get_a_json_error_and_keep_nothing(
    sink: Sink, path: str, body: bytes, headers: dict[str, str], status: int
) -> None:
    reply = send(sink.url + path, body, headers=headers)

    assert reply.status == status
    assert reply.headers["Content-Type"] == "application/json"
    assert set(reply.json()) == {"type", "code", "detail"}
    assert sink.events() == []


def test_sink_keeps_serving_after_rejections(sink: Sink) -> None:
    for body in (b"{not json", b"\x1f\x8b garbage", b"[1]"):
        assert send(sink.url + "/batch/", body).status == 400

    assert post_json(sink.url + "/batch/", {"batch": [EVENT]}).status == 200
    assert sink.events() == [EVENT]


def test_body_over_the_cap_gets_413() -> None:
    with Sink(max_body_size=1024) as small:
        reply = send(small.url + "/e/", b" " * 1025)
        assert reply.status == 413
        assert reply.json()["code"] == "too_large"
        assert post_json(small.url + "/e/", EVENT).status == 200


def test_default_cap_is_20_mib(sink: Sink) -> None:
    assert DEFAULT_MAX_BODY_SIZE == 20 * 1024 * 1024
    assert send(sink.url + "/batch/", b" " * (DEFAULT_MAX_BODY_SIZE + 1)).status == 413


def test_decompressed_body_over_the_cap_gets_413() -> None:
    bomb = gzip.compress(b" " * 10_000)
    with Sink(max_body_size=1024) as small:
        reply = send(small.url + "/batch/", bomb, headers={"Content-Encoding": "gzip"})
    assert len(bomb) < 1024
    assert reply.status == 413


def test_missing_content_length_gets_411(sink: Sink) -> None:
    reply = send_raw(sink, b"POST /batch/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.status == 411
    assert reply.json()["code"] == "length_required"


@pytest.mark.parametrize("length", ["abc", "-1"])
def test_invalid_content_length_gets_400(sink: Sink, length: str) -> None:
    request = f"POST /batch/ HTTP/1.1\r\nContent-Length: {length}\r\n\r\n"
    assert send_raw(sink, request.encode()).status == 400


def test_body_shorter_than_its_content_length_gets_400(sink: Sink) -> None:
    request = b"POST /e/ HTTP/1.1\r\nContent-Length: 100\r\n\r\n[]"
    reply = send_raw(sink, request, half_close=True)
    assert reply.status == 400
    assert reply.json()["detail"] == "body ended early"


def test_malformed_request_line_gets_json_400(sink: Sink) -> None:
    reply = send_raw(sink, b"GET /a b HTTP/1.1\r\n\r\n")
    assert reply.status == 400
    assert reply.json()["type"] == "invalid_request"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/batch/", 405),
        ("GET", "/i/v1/analytics/events", 405),
        ("GET", "/array/phc_test/array.js", 404),
        ("GET", "/flags/", 405),
        ("GET", "/s/", 405),
        ("PUT", "/batch/", 501),
    ],
)
def test_other_methods_get_json_errors(sink: Sink, method: str, path: str, status: int) -> None:
    reply = send(sink.url + path, method=method)
    assert reply.status == status
    assert reply.json()["detail"]


def test_head_gets_an_error_without_a_body(sink: Sink) -> None:
    reply = send(sink.url + "/batch/", method="HEAD")
    assert reply.status == 501
    assert reply.body == b""


def test_sink_failure_gets_500_and_keeps_serving(
    sink: Sink, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(events: list[dict[str, Any]]) -> None:
        raise RuntimeError("disk on fire")

    with monkeypatch.context() as patch:
        patch.setattr(sink, "_record", broken)
        reply = post_json(sink.url + "/e/", EVENT)

    assert reply.status == 500
    assert reply.json()["type"] == "server_error"
    assert "disk on fire" in caplog.text
    assert post_json(sink.url + "/e/", EVENT).status == 200


# -- CORS, for posthog-js on another origin ------------------------------------


def test_preflight_allows_the_requesting_origin(sink: Sink) -> None:
    reply = send(
        sink.url + "/e/",
        method="OPTIONS",
        headers={
            "Origin": "http://localhost:8000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert reply.status == 204
    assert reply.headers["Access-Control-Allow-Origin"] == "http://localhost:8000"
    assert reply.headers["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in reply.headers["Access-Control-Allow-Methods"]
    assert reply.headers["Access-Control-Allow-Headers"] == "content-type"


def test_cross_origin_post_is_readable(sink: Sink) -> None:
    reply = post_json(sink.url + "/e/", EVENT, Origin="http://localhost:8000")
    assert reply.headers["Access-Control-Allow-Origin"] == "http://localhost:8000"


def test_same_origin_post_gets_no_cors_headers(sink: Sink) -> None:
    reply = post_json(sink.url + "/e/", EVENT)
    assert reply.headers["Access-Control-Allow-Origin"] is None


# -- inspecting events ---------------------------------------------------------


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


# -- side outputs --------------------------------------------------------------


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


def test_requests_are_logged_at_debug_and_nothing_reaches_stderr(
    sink: Sink, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="posthog_identity.testing"):
        post_json(sink.url + "/e/", EVENT)
        send(sink.url + "/e/", b"{not json")
        send_raw(sink, b"GET /a b HTTP/1.1\r\n\r\n")

    assert capfd.readouterr().err == ""
    assert "POST /e/ HTTP/1.1" in caplog.text
    assert all(r.levelno == logging.DEBUG for r in caplog.records)


def test_connection_errors_are_logged_at_debug(
    sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    assert sink._running is not None
    server, _thread = sink._running
    with caplog.at_level(logging.DEBUG, logger="posthog_identity.testing"):
        try:
            raise ConnectionResetError("client went away")
        except ConnectionResetError:
            server.handle_error(None, ("127.0.0.1", 1))
    [record] = caplog.records
    assert record.levelno == logging.DEBUG
    assert record.exc_info is not None


# -- lifecycle -----------------------------------------------------------------


def test_url_names_the_bound_port() -> None:
    with Sink() as sink:
        host, port = urllib.parse.urlsplit(sink.url).netloc.split(":")
    assert host == "127.0.0.1"
    assert int(port) > 0


def test_url_before_start_raises() -> None:
    with pytest.raises(RuntimeError, match="started"):
        _ = Sink().url


def test_stop_is_idempotent_and_frees_the_port() -> None:
    sink = Sink().start()
    url = sink.url
    sink.stop()
    sink.stop()

    with pytest.raises(urllib.error.URLError):
        send(url + "/e/", b"[]")


def test_stop_before_start_does_nothing() -> None:
    Sink().stop()


def test_a_sink_starts_once(sink: Sink) -> None:
    with pytest.raises(RuntimeError, match="only once"):
        sink.start()


def test_start_with_an_unwritable_jsonl_path_raises(tmp_path: Path) -> None:
    sink = Sink(jsonl_path=tmp_path)  # a directory
    with pytest.raises(IsADirectoryError):
        sink.start()
    with pytest.raises(RuntimeError):
        _ = sink.url


# -- feature flags ---------------------------------------------------------------

# What posthog-js 1.449 posts to /flags/?v=2 (browser-common's _callFlagsEndpoint).
FLAGS_REQUEST = {
    "token": KEY,
    "distinct_id": "anon-1",
    "groups": {},
    "person_properties": {"$lib": "web", "$lib_version": "1.449.2"},
    "timezone": "Europe/Paris",
    "$device_id": "anon-1",
}
FLAGS = {"new-checkout": "variant-b", "beta": True, "old-nav": False}
PAYLOADS = {"new-checkout": {"button": "green"}, "beta": "hello", "old-nav": [1]}


@pytest.fixture
def flagged() -> Iterator[Sink]:
    with Sink(flags=FLAGS, flag_payloads=PAYLOADS) as running:
        yield running


def ask_flags(sink: Sink, path: str = "/flags/?v=2", request: Any = FLAGS_REQUEST) -> Reply:
    return post_json(sink.url + path, request)


def test_flags_v2_answers_an_empty_flag_set(sink: Sink) -> None:
    reply = ask_flags(sink)

    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    answer = reply.json()
    assert set(answer) == {"flags", "errorsWhileComputingFlags", "requestId", "evaluatedAt"}
    assert answer["flags"] == {}
    assert answer["errorsWhileComputingFlags"] is False
    assert uuid.UUID(answer["requestId"])
    assert isinstance(answer["evaluatedAt"], int)


def test_legacy_flags_answer_empty_feature_flag_maps(sink: Sink) -> None:
    answer = ask_flags(sink, "/flags/").json()

    assert answer["featureFlags"] == {}
    assert answer["featureFlagPayloads"] == {}
    assert answer["errorsWhileComputingFlags"] is False
    assert "flags" not in answer


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/flags/?v=2", "flags"),
        ("/flags?v=2", "flags"),
        ("/flags/?v=4", "flags"),
        ("/flags/", "featureFlags"),
        ("/flags/?v=1", "featureFlags"),
        ("/flags/?v=next", "featureFlags"),
        ("/decide/?v=3", "featureFlags"),
        ("/decide/?v=4", "flags"),
    ],
)
def test_flags_answer_in_the_shape_their_version_asks_for(
    flagged: Sink, path: str, shape: str
) -> None:
    answer = ask_flags(flagged, path).json()
    assert {"flags", "featureFlags"} & set(answer) == {shape}


def test_configured_flags_answer_v2_records(flagged: Sink) -> None:
    # posthog-js's normalizeFlagsResponse: value = variant ?? enabled; payload =
    # metadata.payload (a JSON string) of the enabled flags.
    flags = ask_flags(flagged).json()["flags"]

    assert flags == {
        "new-checkout": {
            "key": "new-checkout",
            "enabled": True,
            "variant": "variant-b",
            "reason": {
                "code": "condition_match",
                "condition_index": 0,
                "description": "Matched condition set 1",
            },
            "metadata": {"id": 1, "version": 1, "payload": '{"button": "green"}'},
        },
        "beta": {
            "key": "beta",
            "enabled": True,
            "variant": None,
            "reason": {
                "code": "condition_match",
                "condition_index": 0,
                "description": "Matched condition set 1",
            },
            "metadata": {"id": 2, "version": 1, "payload": '"hello"'},
        },
        "old-nav": {
            "key": "old-nav",
            "enabled": False,
            "variant": None,
            "reason": {"code": "no_condition_match", "description": "No matching condition set"},
            "metadata": {"id": 3, "version": 1},
        },
    }


def test_configured_flags_answer_legacy_maps(flagged: Sink) -> None:
    answer = ask_flags(flagged, "/flags/").json()

    assert answer["featureFlags"] == FLAGS
    assert answer["featureFlagPayloads"] == {
        "new-checkout": '{"button": "green"}',
        "beta": '"hello"',
    }


def test_v4_flag_records_carry_typed_values(flagged: Sink) -> None:
    flags = ask_flags(flagged, "/flags/?v=4").json()["flags"]
    assert {key: record["value"] for key, record in flags.items()} == FLAGS


def test_posthog_python_reads_the_configured_flags(flagged: Sink) -> None:
    with client(flagged, sync_mode=True) as ph:
        flags = ph.evaluate_flags("user-1")

    assert [flags.get_flag(key) for key in FLAGS] == ["variant-b", True, False]
    assert flags.get_flag("missing") is None
    assert flags.get_flag_payload("new-checkout") == {"button": "green"}
    [request] = flagged.flag_requests()
    assert (request["distinct_id"], request["api_key"]) == ("user-1", KEY)


def test_flag_keys_limit_the_answer(flagged: Sink) -> None:
    answer = ask_flags(flagged, request={**FLAGS_REQUEST, "flag_keys": ["beta"]}).json()
    assert list(answer["flags"]) == ["beta"]


def test_disable_flags_answers_no_flags(flagged: Sink) -> None:
    answer = ask_flags(flagged, request={**FLAGS_REQUEST, "disable_flags": True}).json()
    assert answer["flags"] == {}


@pytest.mark.parametrize("path", ["/decide/?v=3", "/flags/?v=2&config=true"])
def test_decide_and_config_true_carry_the_remote_config(flagged: Sink, path: str) -> None:
    answer = ask_flags(flagged, path).json()
    assert answer["supportedCompression"] == ["gzip", "gzip-js"]
    assert answer["sessionRecording"] is False
    assert answer["hasFeatureFlags"] is True


def gzip_js(payload: Any) -> bytes:
    return gzip.compress(json.dumps(payload).encode(), mtime=0)


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        pytest.param("/flags/?v=2", json.dumps(FLAGS_REQUEST).encode(), {}, id="json"),
        pytest.param(
            "/flags/?v=2",
            gzip_js(FLAGS_REQUEST),
            {"Content-Type": "text/plain"},
            id="posthog-js-gzip",  # 1.449 drops ?compression=gzip-js from the URL
        ),
        pytest.param(
            "/flags/?v=2&compression=gzip-js",
            gzip_js(FLAGS_REQUEST),
            {"Content-Type": "text/plain"},
            id="gzip-js-parameter",
        ),
        pytest.param(
            "/flags/?v=2&compression=base64",
            base64_form(FLAGS_REQUEST),
            {"Content-Type": "application/x-www-form-urlencoded"},
            id="base64",
        ),
        pytest.param(
            "/flags/?v=4",
            gzip_js(FLAGS_REQUEST),
            {"Content-Encoding": "gzip"},
            id="content-encoding-gzip",
        ),
    ],
)
def test_flags_requests_are_decoded_and_recorded(
    sink: Sink, path: str, body: bytes, headers: dict[str, str]
) -> None:
    assert send(sink.url + path, body, headers=headers).status == 200
    assert sink.flag_requests() == [FLAGS_REQUEST]


def test_flags_requests_are_not_events(sink: Sink) -> None:
    ask_flags(sink)
    assert sink.events() == []


def test_flag_requests_returns_copies(sink: Sink) -> None:
    ask_flags(sink)
    sink.flag_requests()[0]["distinct_id"] = "changed"
    assert sink.flag_requests() == [FLAGS_REQUEST]


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        pytest.param(b"{not json", 400, "invalid_request", id="malformed-json"),
        pytest.param(b"[]", 400, "invalid_request", id="not-an-object"),
        pytest.param(
            json.dumps({"distinct_id": "anon-1"}).encode(),
            401,
            "authentication_error",
            id="no-token",
        ),
        pytest.param(
            json.dumps({"token": KEY, "distinct_id": ""}).encode(),
            400,
            "invalid_request",
            id="empty-distinct-id",
        ),
        pytest.param(
            json.dumps({"api_key": KEY}).encode(), 400, "invalid_request", id="no-distinct-id"
        ),
    ],
)
def test_rejected_flags_requests_get_a_json_error_and_keep_nothing(
    sink: Sink, body: bytes, status: int, kind: str
) -> None:
    reply = send(sink.url + "/flags/?v=2", body)

    assert reply.status == status
    assert reply.json()["type"] == kind
    assert sink.flag_requests() == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"flags": {"beta": 1}}, "True, False or a variant name"),
        ({"flags": {"beta": ""}}, "True, False or a variant name"),
        ({"flags": {"": True}}, "non-empty strings"),
        ({"flags": {"beta": True}, "flag_payloads": {"other": 1}}, r"\['other'\]"),
    ],
    ids=["number", "empty-variant", "empty-key", "payload-without-flag"],
)
def test_invalid_flags_are_refused_at_construction(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Sink(**options)


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


# -- remote config -----------------------------------------------------------------

CONFIG_SCRIPT = re.compile(
    r"\(function \(\) \{\n"
    r"  window\._POSTHOG_REMOTE_CONFIG = window\._POSTHOG_REMOTE_CONFIG \|\| \{\};\n"
    r"  window\._POSTHOG_REMOTE_CONFIG\[(?P<token>.*)\] = "
    r"\{config: (?P<config>.*), siteApps: \[\]\};\n"
    r"\}\)\(\);\n"
)


def run_node(script: str) -> Any:
    """Run a script in Node and return what it printed, as JSON."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    done = subprocess.run(
        [node, "-e", script], capture_output=True, text=True, timeout=30, check=True
    )
    return json.loads(done.stdout)


def remote_config_in_a_window(script: str) -> Any:
    # The config.js as a browser runs it: against a global `window`.
    return run_node("const window = {};\n" + script + "\nconsole.log(JSON.stringify(window));")[
        "_POSTHOG_REMOTE_CONFIG"
    ]


def test_config_js_sets_the_remote_config_for_its_token(sink: Sink) -> None:
    reply = send(sink.url + "/array/phc_test/config.js", method="GET")

    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/javascript; charset=utf-8"
    match = CONFIG_SCRIPT.fullmatch(reply.body.decode())
    assert match is not None
    assert json.loads(match["token"]) == KEY
    assert json.loads(match["config"])["token"] == KEY


def test_config_js_runs_in_a_javascript_engine(sink: Sink) -> None:
    script = send(sink.url + "/array/phc_test/config.js", method="GET").body.decode()
    configs = remote_config_in_a_window(script)
    assert list(configs) == [KEY]
    assert configs[KEY]["siteApps"] == []
    assert configs[KEY]["config"]["token"] == KEY


def test_config_js_escapes_a_hostile_token(sink: Sink) -> None:
    token = "</script><script>alert(1)//\"'\u2028"
    path = "/array/" + urllib.parse.quote(token, safe="") + "/config.js"
    script = send(sink.url + path, method="GET").body.decode()

    assert "</script>" not in script
    assert "\u2028" not in script
    assert list(remote_config_in_a_window(script)) == [token]


def test_config_json_is_the_same_config(sink: Sink) -> None:
    script = send(sink.url + "/array/phc_test/config.js", method="GET").body.decode()
    reply = send(sink.url + "/array/phc_test/config", method="GET")

    assert reply.headers["Content-Type"] == "application/json"
    match = CONFIG_SCRIPT.fullmatch(script)
    assert match is not None
    assert reply.json() == json.loads(match["config"])


def test_remote_config_turns_off_every_product_posthog_js_reads(sink: Sink) -> None:
    # The keys each posthog-js 1.449 extension reads in its onRemoteConfig.
    config = send(sink.url + "/array/phc_test/config", method="GET").json()
    assert config == {
        "token": KEY,
        "supportedCompression": ["gzip", "gzip-js"],
        "hasFeatureFlags": False,
        "captureDeadClicks": False,
        "capturePerformance": False,
        "autocapture_opt_out": False,
        "autocaptureExceptions": False,
        "analytics": {"endpoint": "/e/"},
        "elementsChainAsString": True,
        "errorTracking": {"autocaptureExceptions": False, "suppressionRules": []},
        "logs": {"captureConsoleLogs": False},
        "sessionRecording": False,
        "heatmaps": False,
        "conversations": False,
        "surveys": False,
        "productTours": False,
        "defaultIdentifiedOnly": True,
        "siteApps": [],
    }


def test_remote_config_has_feature_flags_when_flags_are_configured(flagged: Sink) -> None:
    # posthog-js skips its first /flags request when hasFeatureFlags is false.
    config = send(flagged.url + "/array/phc_test/config", method="GET").json()
    assert config["hasFeatureFlags"] is True


def test_config_requests_record_their_tokens(sink: Sink) -> None:
    send(sink.url + "/array/phc_one/config.js", method="GET")
    send(sink.url + "/array/phc_two/config/", method="GET")
    assert sink.config_tokens() == ["phc_one", "phc_two"]


# -- static files ------------------------------------------------------------------


@pytest.fixture
def static_dir(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "sub").mkdir(parents=True)
    (root / "1.449.2").mkdir()
    files = {
        "array.js": "/* array */",
        "surveys.js": "/* surveys */",
        "recorder.js": "/* recorder, unversioned */",
        "1.449.2/recorder.js": "/* recorder 1.449.2 */",
        "sub/inner.js": "/* inner */",
        "data.json": "{}",
        "style.css": "a {}",
        "image.png": "png",
        "blob.unknownext": "blob",
    }
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    (tmp_path / "secret.txt").write_text("classified", encoding="utf-8")
    (root / "escape.txt").symlink_to(tmp_path / "secret.txt")
    (root / "link-out").symlink_to(tmp_path, target_is_directory=True)
    (root / "alias.js").symlink_to(root / "array.js")
    (root / "loop").symlink_to(root / "loop")
    return root


@pytest.fixture
def static_sink(static_dir: Path) -> Iterator[Sink]:
    with Sink(static_dir=static_dir) as running:
        yield running


def get_raw(sink: Sink, target: str) -> Reply:
    # By hand, so that no client normalises `..` or percent-escapes first.
    return send_raw(sink, f"GET {target} HTTP/1.0\r\n\r\n".encode())


@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("/static/array.js", "/* array */"),
        ("/static/sub/inner.js", "/* inner */"),
        ("/static/surveys.js?v=1.449.2", "/* surveys */"),
        ("/static/1.449.2/surveys.js", "/* surveys */"),
        ("/static/1.449.2/recorder.js", "/* recorder 1.449.2 */"),
        ("/static/recorder.js", "/* recorder, unversioned */"),
        ("/static/alias.js", "/* array */"),
        ("/static/%61rray.js", "/* array */"),
    ],
    ids=[
        "file",
        "nested",
        "query-ignored",
        "version-stripped",
        "versioned-file-first",
        "unversioned",
        "symlink-inside",
        "percent-encoded",
    ],
)
def test_static_serves_files_from_the_directory(static_sink: Sink, target: str, body: str) -> None:
    reply = get_raw(static_sink, target)
    assert reply.status == 200
    assert reply.body.decode() == body


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("array.js", "application/javascript; charset=utf-8"),
        ("data.json", "application/json"),
        ("style.css", "text/css; charset=utf-8"),
        ("image.png", "image/png"),
        ("blob.unknownext", "application/octet-stream"),
    ],
)
def test_static_files_get_their_content_type(
    static_sink: Sink, name: str, content_type: str
) -> None:
    reply = send(static_sink.url + "/static/" + name, method="GET")
    assert reply.headers["Content-Type"] == content_type
    assert reply.headers["Content-Length"] == str(len(reply.body))
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "target",
    [
        "/static/../secret.txt",
        "/static/../sink.py",
        "/static/%2e%2e/secret.txt",
        "/static/%2E%2E%2Fsecret.txt",
        "/static/sub/../../secret.txt",
        "/static/1.449.2/../../secret.txt",
        "/static/./array.js",
        "/static/..%5csecret.txt",
        "/static/array.js%00.txt",
        "ABSOLUTE",
        "ENCODED-ABSOLUTE",
        "/static/escape.txt",
        "/static/link-out/secret.txt",
        "/static/loop",
        "/static/sub",
        "/static/",
        "/static/missing.js",
        "/static/notaversion/surveys.js",
    ],
    ids=[
        "dotdot",
        "dotdot-sink-py",
        "encoded-dotdot",
        "encoded-dotdot-slash",
        "nested-dotdot",
        "version-dotdot",
        "dot",
        "backslash",
        "nul",
        "absolute",
        "encoded-absolute",
        "symlinked-file-outside",
        "symlinked-dir-outside",
        "symlink-loop",
        "directory",
        "empty",
        "missing",
        "not-a-version",
    ],
)
def test_static_refuses_paths_outside_its_files(
    static_sink: Sink, static_dir: Path, target: str
) -> None:
    secret = str(static_dir.parent / "secret.txt")
    if target == "ABSOLUTE":
        target = "/static/" + secret
    elif target == "ENCODED-ABSOLUTE":
        target = "/static/" + urllib.parse.quote(secret, safe="")
    reply = get_raw(static_sink, target)

    assert reply.status == 404
    assert reply.json()["code"] == "not_found"
    assert b"classified" not in reply.body


def test_static_without_a_directory_is_404(sink: Sink) -> None:
    assert send(sink.url + "/static/array.js", method="GET").status == 404


def test_static_file_that_cannot_be_opened_is_404(
    static_sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    def vanished(self: Path, *args: Any, **kwargs: Any) -> Any:
        raise FileNotFoundError(self)

    monkeypatch.setattr(Path, "open", vanished)
    assert send(static_sink.url + "/static/array.js", method="GET").status == 404


def test_static_dir_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        Sink(static_dir=tmp_path / "missing")


# -- session recordings ------------------------------------------------------------


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


# -- CORS for the rest of posthog-js's requests --------------------------------------

ORIGIN = "http://localhost:8000"


def test_preflight_for_flags_allows_the_requesting_origin(sink: Sink) -> None:
    reply = send(
        sink.url + "/flags/?v=2",
        method="OPTIONS",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert reply.status == 204
    assert reply.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in reply.headers["Access-Control-Allow-Methods"]
    assert reply.headers["Access-Control-Allow-Headers"] == "content-type"
    assert reply.headers["Access-Control-Allow-Private-Network"] is None


def test_preflight_from_a_public_page_allows_the_private_network(sink: Sink) -> None:
    reply = send(
        sink.url + "/e/",
        method="OPTIONS",
        headers={
            "Origin": "https://example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Private-Network": "true",
        },
    )
    assert reply.headers["Access-Control-Allow-Private-Network"] == "true"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/flags/?v=2"),
        ("POST", "/s/"),
        ("GET", "/array/phc_test/config.js"),
        ("GET", "/array/phc_test/config"),
        ("GET", "/static/array.js"),
    ],
)
def test_cross_origin_requests_are_readable(static_sink: Sink, method: str, path: str) -> None:
    body = json.dumps(FLAGS_REQUEST).encode() if method == "POST" else None
    reply = send(static_sink.url + path, body, method=method, headers={"Origin": ORIGIN})
    assert reply.status == 200
    assert reply.headers["Access-Control-Allow-Origin"] == ORIGIN


# -- the command line ----------------------------------------------------------------

LISTENING = re.compile(r"PostHog sink listening on (http://127\.0\.0\.1:\d+)")
TIME = r"\d\d:\d\d:\d\d"


class LineWriter:
    """A stdout that hands each complete line to a queue."""

    def __init__(self, lines: queue.Queue[str]) -> None:
        self.lines = lines
        self.partial = ""

    def write(self, text: str) -> int:
        *complete, self.partial = (self.partial + text).split("\n")
        for line in complete:
            self.lines.put(line)
        return len(text)

    def flush(self) -> None:
        pass


def run_main(
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    drive: Callable[[str, queue.Queue[str]], None],
) -> int:
    """Run `main` in this (the main) thread; `drive` talks to it, then it gets SIGINT."""
    lines: queue.Queue[str] = queue.Queue()
    monkeypatch.setattr(sys, "stdout", LineWriter(lines))
    failures: list[BaseException] = []

    def driver() -> None:
        try:
            match = LISTENING.fullmatch(lines.get(timeout=10))
        except queue.Empty as exc:  # main never listened: nothing to stop
            failures.append(exc)
            return
        try:
            assert match is not None
            drive(match[1], lines)
        except BaseException as exc:
            failures.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=driver)
    thread.start()
    try:
        code = main(argv)
    finally:
        thread.join(timeout=30)
    if failures:
        raise failures[0]
    return code


def test_main_prints_one_line_per_event_and_flags_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    printed: list[str] = []

    def drive(url: str, lines: queue.Queue[str]) -> None:
        ph = Client(KEY, host=url, sync_mode=True)
        try:
            ph.capture("signup", distinct_id="user-1")
            ph.alias(previous_id="user-1", distinct_id="anon-1")
        finally:
            ph.shutdown()
        identify = {
            "event": "$identify",
            "properties": {"distinct_id": "user-1", "$anon_distinct_id": "anon-1", "token": KEY},
        }
        post_json(url + "/e/", {"api_key": KEY, "batch": [identify]})
        post_json(url + "/flags/?v=2", FLAGS_REQUEST)
        printed.extend(lines.get(timeout=10) for _ in range(4))

    assert run_main(monkeypatch, ["--port", "0"], drive) == 0
    patterns = [
        rf"{TIME} signup distinct_id=user-1",
        rf"{TIME} \$create_alias distinct_id=user-1 alias=anon-1",
        rf"{TIME} \$identify distinct_id=user-1 \$anon_distinct_id=anon-1",
        rf"{TIME} flags\? distinct_id=anon-1",
    ]
    assert [bool(re.fullmatch(p, line)) for p, line in zip(patterns, printed, strict=True)] == [
        True
    ] * 4, printed


def test_main_writes_jsonl_and_serves_the_static_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, static_dir: Path
) -> None:
    jsonl = tmp_path / "events.jsonl"
    served: list[bytes] = []

    def drive(url: str, lines: queue.Queue[str]) -> None:
        post_json(url + "/e/", EVENT)
        served.append(send(url + "/static/1.449.2/surveys.js", method="GET").body)

    argv = ["--port", "0", "--jsonl", str(jsonl), "--static-dir", str(static_dir)]
    assert run_main(monkeypatch, argv, drive) == 0
    assert [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()] == [EVENT]
    assert served == [b"/* surveys */"]


def test_main_restores_the_signal_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    run_main(monkeypatch, ["--port", "0"], lambda url, lines: None)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.parametrize("problem", ["port-taken", "static-dir-missing", "jsonl-is-a-directory"])
def test_main_that_cannot_start_says_why_and_returns_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, problem: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        argv = {
            "port-taken": ["--port", str(taken.getsockname()[1])],
            "static-dir-missing": ["--port", "0", "--static-dir", str(tmp_path / "no")],
            "jsonl-is-a-directory": ["--port", "0", "--jsonl", str(tmp_path)],
        }[problem]
        assert main(argv) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("posthog-identity sink: cannot start: ")


def test_main_subprocess_prints_events_and_stops_on_sigterm() -> None:
    code = "from posthog_identity.testing.cli import main; raise SystemExit(main(['--port','0']))"
    with subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        watchdog = threading.Timer(30, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            match = LISTENING.fullmatch(proc.stdout.readline().rstrip("\n"))
            assert match is not None
            post_json(match[1] + "/e/", [EVENT, OTHER])
            printed = [proc.stdout.readline().rstrip("\n") for _ in range(2)]
            proc.send_signal(signal.SIGTERM)
            rest, err = proc.communicate(timeout=20)
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    assert proc.returncode == 0
    assert re.fullmatch(rf"{TIME} signup distinct_id=user-1", printed[0])
    assert re.fullmatch(rf"{TIME} login distinct_id=user-2", printed[1])
    assert (rest, err) == ("", "")


@pytest.mark.parametrize(
    ("event", "line"),
    [
        pytest.param(EVENT, "signup distinct_id=user-1", id="posthog-python"),
        pytest.param(JS_EVENT, "$pageview distinct_id=anon-1", id="posthog-js"),
        pytest.param(
            {"event": "$create_alias", "distinct_id": "u", "properties": {"alias": "a"}},
            "$create_alias distinct_id=u alias=a",
            id="alias",
        ),
        pytest.param(
            {"event": "$identify", "properties": {"distinct_id": "u", "$anon_distinct_id": "a"}},
            "$identify distinct_id=u $anon_distinct_id=a",
            id="identify",
        ),
        pytest.param(
            {"event": "$identify", "properties": {"distinct_id": "u"}},
            "$identify distinct_id=u",
            id="identify-without-anonymous-id",
        ),
        pytest.param(
            {"event": "odd name", "distinct_id": "line\nbreak", "properties": []},
            'odd name" distinct_id="line\\nbreak"',
            id="escaped",
        ),
        pytest.param(
            {"event": "x", "distinct_id": "Jos\u00e9\u2028"},
            'x distinct_id="Jos\\u00e9\\u2028"',
            id="non-ascii",
        ),
        pytest.param({"event": "x", "distinct_id": 42}, "x distinct_id=42", id="number"),
    ],
)
def test_format_event_is_one_line(event: dict[str, Any], line: str) -> None:
    formatted = format_event(event)
    assert re.fullmatch(TIME + " .*", formatted)
    assert formatted.endswith(line)
    assert len(formatted.splitlines()) == 1


# -- flag definitions: local evaluation, and /flags evaluating them ------------------

PERSONAL = "phx_personal_test_key"
BEARER = {"Authorization": f"Bearer {PERSONAL}"}
DEFINITIONS_PATH = "/flags/definitions"


def definition(key: str, *groups: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A flag definition in PostHog's local-evaluation shape."""
    filters = {"groups": list(groups) or [{"properties": [], "rollout_percentage": 100}]}
    filters.update(extra.pop("filters", {}))
    return {"id": extra.pop("id", 7), "key": key, "active": True, "filters": filters, **extra}


PRO_ONLY = definition(
    "pro-dashboard",
    {
        "properties": [{"key": "plan", "value": ["pro"], "operator": "exact", "type": "person"}],
        "rollout_percentage": 100,
    },
)
ENTERPRISE_COMPANIES = definition(
    "sso",
    {
        "properties": [
            {"key": "tier", "value": "enterprise", "operator": "exact", "type": "group"}
        ],
        "rollout_percentage": 100,
    },
    filters={"aggregation_group_type_index": 0},
)


@pytest.fixture
def defined() -> Iterator[Sink]:
    with Sink(flag_definitions=EXAMPLE_FLAG_DEFINITIONS) as running:
        yield running


def ask_definitions(
    sink: Sink,
    *,
    key: str | None = PERSONAL,
    token: str | None = KEY,
    path: str = DEFINITIONS_PATH,
    etag: str | None = None,
) -> Reply:
    query = "?send_cohorts" if token is None else f"?token={token}&send_cohorts"
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    if etag is not None:
        headers["If-None-Match"] = etag
    return send(sink.url + path + query, method="GET", headers=headers)


def evaluated(sink: Sink, distinct_id: str, **request: Any) -> dict[str, Any]:
    """posthog-python's /flags?v=4 answer as {key: (value, payload)}."""
    body = {"api_key": KEY, "distinct_id": distinct_id, **request}
    flags = ask_flags(sink, "/flags/?v=4", body).json()["flags"]
    return {k: (r["value"], r["metadata"].get("payload")) for k, r in flags.items()}


def test_definitions_answer_in_the_local_evaluation_shape(defined: Sink) -> None:
    reply = ask_definitions(defined)

    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.json() == {
        "flags": list(EXAMPLE_FLAG_DEFINITIONS),
        "group_type_mapping": {},
        "cohorts": {},
    }
    assert re.fullmatch(r'"[0-9a-f]{32}"', reply.headers["ETag"])


def test_definitions_are_served_at_the_older_local_evaluation_path(defined: Sink) -> None:
    reply = ask_definitions(defined, path="/api/feature_flag/local_evaluation/")
    assert reply.status == 200
    assert [flag["key"] for flag in reply.json()["flags"]] == ["beta-banner", "checkout-experiment"]


@pytest.mark.parametrize("form", ["{}", "W/{}", "*", '"other", {}'])
def test_definitions_matching_if_none_match_get_304(defined: Sink, form: str) -> None:
    etag = ask_definitions(defined).headers["ETag"]

    reply = ask_definitions(defined, etag=form.format(etag))

    assert reply.status == 304
    assert reply.body == b""
    assert reply.headers["ETag"] == etag


def test_definitions_with_a_stale_etag_get_the_definitions(defined: Sink) -> None:
    reply = ask_definitions(defined, etag='"stale"')
    assert reply.status == 200
    assert len(reply.json()["flags"]) == 2


def test_definitions_of_a_project_without_flags_are_empty(sink: Sink) -> None:
    assert ask_definitions(sink).json() == {"flags": [], "group_type_mapping": {}, "cohorts": {}}


@pytest.mark.parametrize(
    ("options", "key", "status", "code"),
    [
        pytest.param({}, None, 401, "not_authenticated", id="no-key"),
        pytest.param(
            {"personal_api_keys": ["phx_other"]}, PERSONAL, 401, "authentication_failed", id="bad"
        ),
        pytest.param(
            {"unscoped_personal_api_keys": [PERSONAL]},
            PERSONAL,
            403,
            "permission_denied",
            id="scope",
        ),
    ],
)
def test_definitions_refuse_a_missing_invalid_or_unscoped_key(
    options: dict[str, Any], key: str | None, status: int, code: str
) -> None:
    with Sink(flag_definitions=EXAMPLE_FLAG_DEFINITIONS, **options) as sink:
        reply = ask_definitions(sink, key=key)

    assert reply.status == status
    assert reply.json()["type"] == "authentication_error"
    assert reply.json()["code"] == code


def test_definitions_accept_a_listed_key() -> None:
    with Sink(flag_definitions=EXAMPLE_FLAG_DEFINITIONS, personal_api_keys=[PERSONAL]) as sink:
        assert ask_definitions(sink).status == 200


def test_definitions_need_the_project_token(defined: Sink) -> None:
    reply = ask_definitions(defined, token=None)
    assert reply.status == 400
    assert "token" in reply.json()["detail"]


def test_definitions_refuse_post(defined: Sink) -> None:
    assert send(defined.url + DEFINITIONS_PATH, b"{}").status == 405


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


def test_posthog_python_loads_definitions_and_revalidates_with_the_etag(defined: Sink) -> None:
    with client(defined, secret_key=PERSONAL, poll_interval=3600) as ph:
        ph.load_feature_flags()
        ph.load_feature_flags()
        loaded = [flag["key"] for flag in ph.feature_flags or []]

    assert loaded == ["beta-banner", "checkout-experiment"]
    first, second = defined.definition_requests()
    assert (first["path"], first["token"], first["personal_api_key"]) == (
        DEFINITIONS_PATH,
        KEY,
        PERSONAL,
    )
    assert (first["status"], second["status"]) == (200, 304)
    assert second["if_none_match"] is not None


def test_remote_evaluation_agrees_with_posthog_python_local_evaluation(defined: Sink) -> None:
    with (
        client(defined, secret_key=PERSONAL, poll_interval=3600) as local,
        client(defined) as remote,
    ):
        local.load_feature_flags()
        ids = [f"person-{n}" for n in range(200)]
        local_answers = [
            local.get_all_flags_and_payloads(i, only_evaluate_locally=True) for i in ids
        ]
        remote_answers = [remote.get_all_flags_and_payloads(i) for i in ids]

    assert len(defined.flag_requests()) == len(ids)  # every remote answer came from /flags
    assert remote_answers == local_answers
    variants = {answer["featureFlags"]["checkout-experiment"] for answer in remote_answers}
    assert variants == {"control", "test"}


def test_example_flags_split_people_about_in_half(defined: Sink) -> None:
    answers = [evaluated(defined, f"visitor-{n}") for n in range(400)]

    beta = sum(answer["beta-banner"][0] is True for answer in answers)
    test = sum(answer["checkout-experiment"][0] == "test" for answer in answers)
    assert 140 < beta < 260
    assert 140 < test < 260


def test_posthog_js_flags_request_gets_evaluated_records(defined: Sink) -> None:
    flags = ask_flags(defined).json()["flags"]  # distinct id anon-1, as posthog-js asks
    local = evaluated(defined, "anon-1")

    variant, payload = local["checkout-experiment"]
    record = flags["checkout-experiment"]
    assert (record["enabled"], record["variant"]) == (True, variant)
    assert record["metadata"] == {"id": 2, "version": 1, "payload": payload}
    assert json.loads(payload) == json.loads(
        EXAMPLE_FLAG_DEFINITIONS[1]["filters"]["payloads"][variant]
    )
    assert flags["beta-banner"]["metadata"]["id"] == 1


def test_legacy_flags_answer_carries_payloads_of_enabled_flags_only(defined: Sink) -> None:
    # Find one person with the beta banner off and one with it on.
    people: dict[bool, Any] = {}
    for n in range(50):
        answer = ask_flags(defined, "/flags/", {"token": KEY, "distinct_id": f"p-{n}"}).json()
        people.setdefault(answer["featureFlags"]["beta-banner"], answer)
    off, on = people[False], people[True]

    assert "beta-banner" not in off["featureFlagPayloads"]
    assert json.loads(on["featureFlagPayloads"]["beta-banner"]) == {"text": "Try the new beta!"}
    assert "checkout-experiment" in off["featureFlagPayloads"]


def test_person_property_conditions_match_the_request_properties() -> None:
    with Sink(flag_definitions=[PRO_ONLY]) as sink:
        pro = evaluated(sink, "u", person_properties={"plan": "pro"})
        free = evaluated(sink, "u", person_properties={"plan": "free"})
        unknown = evaluated(sink, "u")

    assert pro["pro-dashboard"] == (True, None)
    assert free["pro-dashboard"] == (False, None)
    assert unknown["pro-dashboard"] == (False, None)  # no stored person to look at


@pytest.mark.parametrize(
    ("mapping", "request_", "value"),
    [
        pytest.param(
            {"0": "company"},
            {
                "groups": {"company": "acme"},
                "group_properties": {"company": {"tier": "enterprise"}},
            },
            True,
            id="matching-group",
        ),
        pytest.param(
            {"0": "company"},
            {"groups": {"company": "acme"}, "group_properties": {"company": {"tier": "free"}}},
            False,
            id="other-group",
        ),
        pytest.param({"0": "company"}, {}, False, id="no-group"),
        pytest.param({}, {"groups": {"company": "acme"}}, False, id="unknown-group-type"),
    ],
)
def test_group_flags_match_the_request_groups(
    mapping: dict[str, str], request_: dict[str, Any], value: bool
) -> None:
    with Sink(flag_definitions=[ENTERPRISE_COMPANIES], group_type_mapping=mapping) as sink:
        assert evaluated(sink, "u", **request_)["sso"] == (value, None)
        assert ask_definitions(sink).json()["group_type_mapping"] == mapping


def test_device_id_bucketed_flags_use_posthog_js_device_id() -> None:
    by_device = definition("device-flag", bucketing_identifier="device_id")
    with Sink(flag_definitions=[by_device]) as sink:
        with_device = ask_flags(sink, "/flags/?v=2").json()["flags"]  # carries $device_id
        without = evaluated(sink, "anon-1")

    assert with_device["device-flag"]["enabled"] is True
    assert without["device-flag"] == (False, None)  # undecidable without a device id


def test_inactive_definitions_are_off() -> None:
    with Sink(flag_definitions=[definition("retired", active=False)]) as sink:
        assert evaluated(sink, "u")["retired"] == (False, None)


def test_flag_keys_to_evaluate_limit_the_evaluated_answer(defined: Sink) -> None:
    answer = evaluated(defined, "u", flag_keys_to_evaluate=["beta-banner"])
    assert list(answer) == ["beta-banner"]


def test_configured_flags_and_definitions_answer_together() -> None:
    no_id = {k: v for k, v in definition("no-id").items() if k != "id"}
    with Sink(flags={"static": "on"}, flag_definitions=[no_id]) as sink:
        flags = ask_flags(sink).json()["flags"]

    assert {key: record["metadata"]["id"] for key, record in flags.items()} == {
        "static": 1,
        "no-id": 2,
    }
    assert flags["no-id"]["enabled"] is True


def test_remote_config_has_feature_flags_with_definitions_only(defined: Sink) -> None:
    config = send(defined.url + "/array/phc_test/config", method="GET").json()
    assert config["hasFeatureFlags"] is True


def test_definitions_are_copied_at_construction() -> None:
    mine = definition("mine")
    with Sink(flag_definitions=[mine]) as sink:
        mine["active"] = False
        assert evaluated(sink, "u")["mine"] == (True, None)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"flag_definitions": ["beta"]}, "not an object with a non-empty 'key'"),
        ({"flag_definitions": [{"key": ""}]}, "not an object with a non-empty 'key'"),
        ({"flag_definitions": [definition("a"), definition("a")]}, "more than once"),
        ({"flags": {"a": True}, "flag_definitions": [definition("a")]}, "more than once"),
        ({"flag_definitions": [{"key": "a", "when": object()}]}, "not JSON"),
        ({"flag_definitions": [{"key": "a", "filters": []}]}, "'filters' must be an object"),
        ({"flag_definitions": [definition("a", filters={"payloads": ["x"]})]}, "'payloads'"),
        ({"flag_definitions": [definition("a", filters={"payloads": {"true": 1}})]}, "'payloads'"),
        (
            {"flag_definitions": [definition("a", filters={"payloads": {"true": "{"}})]},
            "'payloads'",
        ),
        ({"personal_api_keys": "phx_one"}, "a collection"),
        ({"unscoped_personal_api_keys": "phx_one"}, "a collection"),
    ],
    ids=[
        "not-an-object",
        "empty-key",
        "duplicate",
        "duplicate-of-a-configured-flag",
        "not-json",
        "filters-not-an-object",
        "payloads-not-an-object",
        "payload-not-a-string",
        "payload-not-json",
        "one-personal-key-string",
        "one-unscoped-key-string",
    ],
)
def test_invalid_definitions_are_refused_at_construction(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Sink(**options)


def test_main_example_flags_serves_the_example_definitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served: list[Any] = []

    def drive(url: str, lines: queue.Queue[str]) -> None:
        reply = send(f"{url}/flags/definitions?token={KEY}", method="GET", headers=BEARER)
        served.append(reply.json()["flags"])

    assert run_main(monkeypatch, ["--port", "0", "--example-flags"], drive) == 0
    assert served == [list(EXAMPLE_FLAG_DEFINITIONS)]
