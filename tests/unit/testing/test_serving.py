"""werkzeug's server under the sink: its own errors answered in JSON, its logging at
debug level, and nothing on stderr.
"""

from __future__ import annotations

import logging

import pytest

from posthog_identity.testing import Sink
from tests.helpers.sink import EVENT, post_json, send, send_raw


def test_malformed_request_line_gets_json_400(sink: Sink) -> None:
    reply = send_raw(sink, b"GET /a b HTTP/1.1\r\n\r\n")
    assert reply.status == 400
    assert reply.json()["type"] == "invalid_request"


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
