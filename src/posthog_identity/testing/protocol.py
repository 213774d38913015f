"""PostHog's ingestion protocol: request bodies in, events and flags requests out.

Sans-IO: these functions take bytes and header values and return decoded
values, or raise `Rejected` with the status and JSON body PostHog would answer.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

__all__ = [
    "CAPTURE_PATHS",
    "CAPTURE_V1_PATH",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFINITIONS_PATHS",
    "FLAGS_PATHS",
    "POST_ONLY_PATHS",
    "RECORDING_PATH",
    "Event",
    "Rejected",
    "decode_body",
    "distinct_id_of",
    "error_reply",
    "parse_events",
    "parse_flags_request",
]

#: PostHog's own cap on a request body, compressed or not.
DEFAULT_MAX_BODY_SIZE = 20 * 1024 * 1024

Event = dict[str, Any]

# Paths are compared without their trailing slash.
#: Legacy (v0) capture: posthog-python's `/batch/` and AI lane, posthog-js's
#: `/e/` and older aliases.
CAPTURE_PATHS = frozenset({"/batch", "/i/v0/ai/batch", "/e", "/capture", "/i/v0/e"})
#: posthog-python's opt-in capture v1 (`capture_mode="v1"`): Bearer auth and a
#: per-event `results` map in the response.
CAPTURE_V1_PATH = "/i/v1/analytics/events"
#: posthog-js's `/flags/?v=2`, posthog-python's `/flags/?v=4`, older clients' `/decide/`.
FLAGS_PATHS = frozenset({"/flags", "/decide"})
#: Flag definitions for local evaluation, asked with a personal API key:
#: posthog-python 7's `/flags/definitions`, older clients' `/api/feature_flag/local_evaluation`.
DEFINITIONS_PATHS = frozenset({"/flags/definitions", "/api/feature_flag/local_evaluation"})
#: posthog-js's session recordings.
RECORDING_PATH = "/s"
POST_ONLY_PATHS = CAPTURE_PATHS | FLAGS_PATHS | {CAPTURE_V1_PATH, RECORDING_PATH}

_GZIP_MAGIC = b"\x1f\x8b"


class Rejected(Exception):
    """A request the sink answers with an error status and PostHog's JSON error body."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = int(status)
        self.reply = error_reply(status, code, detail)


def error_reply(status: int, code: str, detail: str) -> dict[str, Any]:
    """The shape of PostHog's capture errors; posthog-python reports `detail`."""
    if status >= 500:
        kind = "server_error"
    elif status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
        kind = "authentication_error"
    else:
        kind = "invalid_request"
    return {"type": kind, "code": code, "detail": detail}


def _inflate(body: bytes, wbits: int, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise Rejected(
            HTTPStatus.BAD_REQUEST, "invalid_compression", f"cannot decompress: {exc}"
        ) from None
    if len(data) > limit:
        raise Rejected(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            "too_large",
            f"decompressed body exceeds {limit} bytes",
        )
    if not inflater.eof or inflater.unused_data:
        raise Rejected(
            HTTPStatus.BAD_REQUEST,
            "invalid_compression",
            "compressed body is truncated or has trailing data",
        )
    return data


def _unbase64(body: bytes) -> bytes:
    # posthog-js's sendBeacon: a form field `data` holding base64 JSON.
    try:
        form = parse_qs(body.decode("ascii"))
        return base64.b64decode(form["data"][-1] if "data" in form else body)
    except (UnicodeDecodeError, binascii.Error) as exc:
        raise Rejected(
            HTTPStatus.BAD_REQUEST, "invalid_payload", f"invalid base64 body: {exc}"
        ) from None


def decode_body(body: bytes, content_encoding: str, compression: str, limit: int) -> bytes:
    """Undo the request's compression, as PostHog's capture does.

    `content_encoding` (the header) wins; without one, posthog-js's
    `?compression=` query parameter decides, and a gzip magic number is
    recognised on its own (posthog-js 1.449 sends gzip-js as text/plain
    without the parameter). `limit` caps the decompressed size.
    """
    coding = content_encoding.strip().lower() or "identity"
    compression = compression.lower()
    if coding == "identity":
        if compression in ("gzip", "gzip-js") or body.startswith(_GZIP_MAGIC):
            coding = "gzip"
        elif compression == "base64":
            return _unbase64(body)
    if coding == "gzip":
        return _inflate(body, 16 + zlib.MAX_WBITS, limit)
    if coding == "deflate":
        return _inflate(body, zlib.MAX_WBITS, limit)
    if coding == "identity":
        return body
    raise Rejected(
        HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        "unsupported_encoding",
        f"unsupported Content-Encoding {coding!r}",
    )


def _load_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise Rejected(
            HTTPStatus.BAD_REQUEST, "invalid_payload", f"malformed JSON: {exc}"
        ) from None


def distinct_id_of(event: Mapping[str, Any]) -> Any:
    """An event's distinct id; posthog-js puts it in the properties only."""
    properties = event.get("properties")
    if "distinct_id" in event or not isinstance(properties, dict):
        return event.get("distinct_id")
    return properties.get("distinct_id", properties.get("$distinct_id"))


def _check_event(item: Any, index: int) -> Event:
    if not isinstance(item, dict):
        problem = "is not a JSON object"
    elif not isinstance(item.get("event"), str) or not item["event"]:
        problem = "has no event name"
    elif distinct_id_of(item) in (None, ""):
        problem = "has no distinct_id"
    elif not isinstance(item.get("properties", {}), dict):
        problem = "has properties that are not an object"
    else:
        return item
    raise Rejected(HTTPStatus.BAD_REQUEST, "invalid_payload", f"event {index} {problem}")


def parse_events(data: bytes, api_key: str | None = None) -> list[Event]:
    """Read the events of one request body: a batch envelope, a list or one event.

    The envelope's `api_key` (or, for capture v1, the Bearer token passed as
    `api_key`) is recorded on each event that has none. Every event is checked
    before any is accepted.
    """
    payload = _load_json(data)
    items = payload
    if isinstance(payload, dict) and "batch" in payload:
        items = payload["batch"]
        envelope_key = payload.get("api_key")
        api_key = envelope_key if isinstance(envelope_key, str) else api_key
    elif isinstance(payload, dict):
        items = [payload]
    if not isinstance(items, list):
        raise Rejected(
            HTTPStatus.BAD_REQUEST,
            "invalid_payload",
            "body is not an event, a list of events or a batch",
        )
    events = [_check_event(item, index) for index, item in enumerate(items)]
    if api_key is not None:
        for event in events:
            event.setdefault("api_key", api_key)
    return events


def parse_flags_request(data: bytes) -> dict[str, Any]:
    """Read a flags request: a JSON object with a project token and a distinct id.

    posthog-js sends the token as `token`, posthog-python as `api_key`.
    """
    body = _load_json(data)
    if not isinstance(body, dict):
        raise Rejected(
            HTTPStatus.BAD_REQUEST, "invalid_payload", "flags request is not a JSON object"
        )
    token = body.get("token", body.get("api_key"))
    if not isinstance(token, str) or not token:
        raise Rejected(
            HTTPStatus.UNAUTHORIZED, "invalid_api_key", "flags request has no project token"
        )
    distinct_id = body.get("distinct_id")
    if not isinstance(distinct_id, str) or not distinct_id:
        raise Rejected(
            HTTPStatus.BAD_REQUEST, "invalid_payload", "flags request has no distinct_id"
        )
    return body
