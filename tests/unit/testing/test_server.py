"""`Sink` as an HTTP server: its routes and their JSON errors, the request bodies it
refuses, failures it survives, CORS for posthog-js, and its lifecycle.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from posthog_identity.testing import DEFAULT_MAX_BODY_SIZE, Sink
from tests.helpers.sink import EVENT, FLAGS_REQUEST, post_json, send, send_raw

ORIGIN = "http://localhost:8000"

# -- requests that are refused, without stopping the sink -------------------------


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


@pytest.mark.parametrize(
    "path",
    ["/static/array.js", "/static/1.449.2/recorder.js", "/array/phc_test/config.js", "/batch/"],
)
def test_head_is_answered_as_get_without_the_body(static_sink: Sink, path: str) -> None:
    got = send(static_sink.url + path, method="GET", headers={"Origin": ORIGIN})
    head = send(static_sink.url + path, method="HEAD", headers={"Origin": ORIGIN})
    assert head.status == got.status
    assert head.body == b""
    for name in ("Content-Type", "Content-Length", "ETag", "Access-Control-Allow-Origin"):
        assert head.headers[name] == got.headers[name], name


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


# -- CORS, for posthog-js on another origin ---------------------------------------


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


# -- CORS for the rest of posthog-js's requests -----------------------------------


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


# -- lifecycle --------------------------------------------------------------------


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
