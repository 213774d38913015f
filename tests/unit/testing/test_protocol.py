"""PostHog's ingestion protocol as the sink speaks it: what real clients and raw requests
send is decoded and kept as sent, and a body PostHog would refuse gets its JSON error.
"""

from __future__ import annotations

import base64
import gzip
import json
import urllib.parse
import zlib
from typing import Any

import pytest

from posthog_identity.testing import Sink
from tests.helpers.sink import (
    EVENT,
    FLAGS_REQUEST,
    JS_EVENT,
    KEY,
    OTHER,
    client,
    gzip_js,
    post_json,
    send,
)

# -- the real posthog client ------------------------------------------------------


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


# -- raw requests that are accepted -----------------------------------------------


def base64_form(payload: Any) -> bytes:
    encoded = base64.b64encode(json.dumps(payload).encode()).decode()
    return b"data=" + urllib.parse.quote(encoded, safe="").encode()


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


# -- raw requests that are rejected -----------------------------------------------

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


def test_decompressed_body_over_the_cap_gets_413() -> None:
    bomb = gzip.compress(b" " * 10_000)
    with Sink(max_body_size=1024) as small:
        reply = send(small.url + "/batch/", bomb, headers={"Content-Encoding": "gzip"})
    assert len(bomb) < 1024
    assert reply.status == 413


# -- flags requests ---------------------------------------------------------------


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
