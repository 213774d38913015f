"""The local sink: real posthog clients deliver to it, bad requests never stop it."""

from __future__ import annotations

import base64
import gzip
import json
import logging
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import Message
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from posthog.client import Client

from posthog_identity.sink import DEFAULT_MAX_BODY_SIZE, Sink

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
        ("GET", "/array/phc_test/config.js", 404),
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
    errors = [r for r in caplog.records if r.name == "posthog_identity.sink"]
    assert [r.levelno for r in errors] == [logging.ERROR, logging.ERROR]
    assert "callback bug" in caplog.text


def test_requests_are_logged_at_debug_and_nothing_reaches_stderr(
    sink: Sink, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="posthog_identity.sink"):
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
    with caplog.at_level(logging.DEBUG, logger="posthog_identity.sink"):
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
