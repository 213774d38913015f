"""A local stand-in for PostHog's ingestion that keeps what it receives.

For the demo, for development and for tests: point a real posthog client (or
posthog-js) at `Sink.url` and inspect the events it sent, instead of mocking
the client. It speaks the endpoints and body encodings the real clients use
(see `Sink`), on a small standard-library HTTP server in a background thread.
`main` runs one from the command line and prints each event as it arrives.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import copy
import hashlib
import json
import logging
import mimetypes
import os
import re
import shutil
import signal
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from posthog.feature_flags import (
    InconclusiveMatchError,
    RequiresServerEvaluation,
    match_feature_flag_properties,
    resolve_bucketing_value,
)

from .snippet import script_json

if TYPE_CHECKING:
    from types import FrameType, TracebackType

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "EXAMPLE_FLAG_DEFINITIONS",
    "Sink",
    "format_event",
    "main",
]

logger = logging.getLogger(__name__)

#: PostHog's own cap on a request body, compressed or not.
DEFAULT_MAX_BODY_SIZE = 20 * 1024 * 1024

Event = dict[str, Any]
Predicate = Callable[[list[Event]], bool]
#: A flag's value: on, off, or on with this variant.
FlagValue = bool | str

# Legacy (v0) capture endpoints, compared without their trailing slash:
# posthog-python's `/batch/` and AI lane, posthog-js's `/e/` and older aliases.
_V0_PATHS = frozenset({"/batch", "/i/v0/ai/batch", "/e", "/capture", "/i/v0/e"})
# posthog-python's opt-in capture v1 (`capture_mode="v1"`): Bearer auth and a
# per-event `results` map in the response.
_V1_PATH = "/i/v1/analytics/events"
# posthog-js's `/flags/?v=2`, posthog-python's `/flags/?v=4`, older clients' `/decide/`.
_FLAGS_PATHS = frozenset({"/flags", "/decide"})
# Flag definitions for local evaluation, asked with a personal API key:
# posthog-python 7's `/flags/definitions`, older clients' `/api/feature_flag/local_evaluation`.
_DEFINITIONS_PATHS = frozenset({"/flags/definitions", "/api/feature_flag/local_evaluation"})
# posthog-js's session recordings.
_RECORDING_PATH = "/s"
_POST_ONLY = _V0_PATHS | _FLAGS_PATHS | {_V1_PATH, _RECORDING_PATH}
# posthog-js's remote config: a script first, JSON when the script gave nothing.
_CONFIG_PATH = re.compile(r"/array/([^/]+)/config(\.js)?/?")
# posthog-js asks for `/static/<its version>/surveys.js` first.
_VERSION_SEGMENT = re.compile(r"v?\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]+)?")
_STATIC_PREFIX = "/static/"

_JAVASCRIPT = "application/javascript; charset=utf-8"
_CONTENT_TYPES = {
    ".js": _JAVASCRIPT,
    ".mjs": _JAVASCRIPT,
    ".cjs": _JAVASCRIPT,
    ".json": "application/json",
    ".map": "application/json",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".wasm": "application/wasm",
}

#: Two flags in the shape of PostHog's local-evaluation API, for demos and tests:
#: `beta-banner`, a boolean rolled out to 50% of people, and `checkout-experiment`,
#: an A/B test splitting everyone 50/50 between `control` and `test`, with a
#: JSON payload per variant. PostHog sends payloads JSON-encoded, as here.
EXAMPLE_FLAG_DEFINITIONS: tuple[dict[str, Any], ...] = (
    {
        "id": 1,
        "team_id": 1,
        "name": "Beta banner for half of the people",
        "key": "beta-banner",
        "active": True,
        "deleted": False,
        "ensure_experience_continuity": False,
        "filters": {
            "groups": [{"properties": [], "rollout_percentage": 50, "variant": None}],
            "multivariate": None,
            "payloads": {"true": json.dumps({"text": "Try the new beta!"})},
        },
    },
    {
        "id": 2,
        "team_id": 1,
        "name": "Checkout experiment",
        "key": "checkout-experiment",
        "active": True,
        "deleted": False,
        "ensure_experience_continuity": False,
        "filters": {
            "groups": [{"properties": [], "rollout_percentage": 100, "variant": None}],
            "multivariate": {
                "variants": [
                    {"key": "control", "name": "Control", "rollout_percentage": 50},
                    {"key": "test", "name": "One-click checkout", "rollout_percentage": 50},
                ]
            },
            "payloads": {
                "control": json.dumps({"button": "Proceed to checkout", "color": "blue"}),
                "test": json.dumps({"button": "Buy now", "color": "green"}),
            },
        },
    },
)

_GZIP_MAGIC = b"\x1f\x8b"
# A body over the cap is still read (and dropped) up to this size so the client
# gets the 413 instead of a connection reset.
_MAX_DRAIN = 4 * DEFAULT_MAX_BODY_SIZE
_CHUNK = 64 * 1024


class _Rejected(Exception):
    """A request the sink answers with an error status and a JSON body."""

    def __init__(self, status: HTTPStatus, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reply = _error_reply(status, code, detail)


def _error_reply(status: int, code: str, detail: str) -> dict[str, Any]:
    # The shape of PostHog's capture errors; posthog-python reports `detail`.
    if status >= 500:
        kind = "server_error"
    elif status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
        kind = "authentication_error"
    else:
        kind = "invalid_request"
    return {"type": kind, "code": code, "detail": detail}


def _not_found(path: str) -> _Rejected:
    return _Rejected(HTTPStatus.NOT_FOUND, "not_found", f"no endpoint at {path}")


def _inflate(body: bytes, wbits: int, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise _Rejected(
            HTTPStatus.BAD_REQUEST, "invalid_compression", f"cannot decompress: {exc}"
        ) from None
    if len(data) > limit:
        raise _Rejected(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            "too_large",
            f"decompressed body exceeds {limit} bytes",
        )
    if not inflater.eof or inflater.unused_data:
        raise _Rejected(
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
        raise _Rejected(
            HTTPStatus.BAD_REQUEST, "invalid_payload", f"invalid base64 body: {exc}"
        ) from None


def _decode_body(
    body: bytes, content_encoding: str, query: Mapping[str, list[str]], limit: int
) -> bytes:
    """Undo the request's compression, as PostHog's capture does.

    `Content-Encoding` wins; without one, posthog-js's `?compression=` query
    parameter decides, and a gzip magic number is recognised on its own
    (posthog-js 1.449 sends gzip-js as text/plain without the parameter).
    """
    coding = content_encoding.strip().lower() or "identity"
    compression = query.get("compression", [""])[-1].lower()
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
    raise _Rejected(
        HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        "unsupported_encoding",
        f"unsupported Content-Encoding {coding!r}",
    )


def _load_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise _Rejected(
            HTTPStatus.BAD_REQUEST, "invalid_payload", f"malformed JSON: {exc}"
        ) from None


def _distinct_id(event: Mapping[str, Any]) -> Any:
    # posthog-js puts the distinct id in the properties only.
    properties = event.get("properties")
    if "distinct_id" in event or not isinstance(properties, dict):
        return event.get("distinct_id")
    return properties.get("distinct_id", properties.get("$distinct_id"))


def _check_event(item: Any, index: int) -> Event:
    if not isinstance(item, dict):
        problem = "is not a JSON object"
    elif not isinstance(item.get("event"), str) or not item["event"]:
        problem = "has no event name"
    elif _distinct_id(item) in (None, ""):
        problem = "has no distinct_id"
    elif not isinstance(item.get("properties", {}), dict):
        problem = "has properties that are not an object"
    else:
        return item
    raise _Rejected(HTTPStatus.BAD_REQUEST, "invalid_payload", f"event {index} {problem}")


def _parse_events(data: bytes, api_key: str | None = None) -> list[Event]:
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
        raise _Rejected(
            HTTPStatus.BAD_REQUEST,
            "invalid_payload",
            "body is not an event, a list of events or a batch",
        )
    events = [_check_event(item, index) for index, item in enumerate(items)]
    if api_key is not None:
        for event in events:
            event.setdefault("api_key", api_key)
    return events


def _parse_flags_request(data: bytes) -> dict[str, Any]:
    """Read a flags request: a JSON object with a project token and a distinct id.

    posthog-js sends the token as `token`, posthog-python as `api_key`.
    """
    body = _load_json(data)
    if not isinstance(body, dict):
        raise _Rejected(
            HTTPStatus.BAD_REQUEST, "invalid_payload", "flags request is not a JSON object"
        )
    token = body.get("token", body.get("api_key"))
    if not isinstance(token, str) or not token:
        raise _Rejected(
            HTTPStatus.UNAUTHORIZED, "invalid_api_key", "flags request has no project token"
        )
    distinct_id = body.get("distinct_id")
    if not isinstance(distinct_id, str) or not distinct_id:
        raise _Rejected(
            HTTPStatus.BAD_REQUEST, "invalid_payload", "flags request has no distinct_id"
        )
    return body


def _remote_config(token: str, *, has_feature_flags: bool) -> dict[str, Any]:
    """The remote config of an empty project: every product off.

    posthog-js 1.449 reads these keys (each extension's `onRemoteConfig`);
    a missing key would leave the extension waiting or on its persisted state.
    """
    return {
        "token": token,
        "supportedCompression": ["gzip", "gzip-js"],
        # Like PostHog: false when the project has no flags, and then
        # posthog-js skips its first `/flags` request.
        "hasFeatureFlags": has_feature_flags,
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


def _remote_config_script(token: str, config: Mapping[str, Any]) -> str:
    # The shape of PostHog's `/array/<token>/config.js`; remote-config.js reads
    # `window._POSTHOG_REMOTE_CONFIG[token].config`.
    return (
        "(function () {\n"
        "  window._POSTHOG_REMOTE_CONFIG = window._POSTHOG_REMOTE_CONFIG || {};\n"
        f"  window._POSTHOG_REMOTE_CONFIG[{script_json(token)}] = "
        f"{{config: {script_json(config)}, siteApps: []}};\n"
        "})();\n"
    )


def _flag_record(
    key: str, value: FlagValue, flag_id: int, payload: str | None, *, typed: bool
) -> dict[str, Any]:
    """One flag of a v2 flags response, as posthog-js's `normalizeFlagsResponse` reads it.

    Its value is `variant ?? enabled`; its payload is `metadata.payload`, a JSON
    string, read only when enabled. `typed` adds posthog-python's `/flags?v=4` value.
    """
    enabled = value is not False
    record: dict[str, Any] = {
        "key": key,
        "enabled": enabled,
        "variant": value if isinstance(value, str) else None,
        "reason": (
            {
                "code": "condition_match",
                "condition_index": 0,
                "description": "Matched condition set 1",
            }
            if enabled
            else {"code": "no_condition_match", "description": "No matching condition set"}
        ),
        "metadata": {"id": flag_id, "version": 1},
    }
    if payload is not None and enabled:
        record["metadata"]["payload"] = payload
    if typed:
        record["value"] = value
    return record


def _requested_keys(request: Mapping[str, Any]) -> list[Any] | None:
    """The flag keys a flags request limits itself to, if any.

    posthog-js sends `flag_keys`, posthog-python `flag_keys_to_evaluate`.
    """
    for name in ("flag_keys", "flag_keys_to_evaluate"):
        keys = request.get(name)
        if isinstance(keys, list):
            return keys
    return None


def _flags_reply(
    flags: Mapping[str, FlagValue],
    payloads: Mapping[str, str],
    request: Mapping[str, Any],
    *,
    path: str,
    query: Mapping[str, list[str]],
    ids: Mapping[str, int],
) -> dict[str, Any]:
    """PostHog's answer to a flags request, in the shape its version asks for.

    `/flags/?v=2` and up (and `/decide/?v=4`) get `flags` records; older
    versions get the legacy `featureFlags` and `featureFlagPayloads` maps.
    `/decide/` and `?config=true` also carry the remote config. `ids` are the
    flags' ids.
    """
    try:
        version = int(query.get("v", ["1"])[-1])
    except ValueError:
        version = 1
    keys = _requested_keys(request)
    selected = {
        key: value
        for key, value in flags.items()
        if request.get("disable_flags") is not True and (not isinstance(keys, list) or key in keys)
    }
    reply: dict[str, Any] = {}
    if path == "/decide" or query.get("config", [""])[-1] == "true":
        token = str(request.get("token", request.get("api_key")))
        reply.update(_remote_config(token, has_feature_flags=bool(flags)))
        reply.update(config={"enable_collect_everything": True}, toolbarParams={})
    if version >= (4 if path == "/decide" else 2):
        reply["flags"] = {
            key: _flag_record(
                key, value, ids[key], payloads.get(key), typed=path == "/flags" and version >= 4
            )
            for key, value in selected.items()
        }
    else:
        reply["featureFlags"] = selected
        reply["featureFlagPayloads"] = {
            key: payloads[key] for key, value in selected.items() if value and key in payloads
        }
    reply.update(
        errorsWhileComputingFlags=False,
        requestId=str(uuid.uuid4()),
        evaluatedAt=int(time.time() * 1000),
    )
    return reply


def _check_flags(flags: Mapping[str, FlagValue]) -> dict[str, FlagValue]:
    for key, value in flags.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"flag keys must be non-empty strings, not {key!r}")
        if not isinstance(value, bool) and (not isinstance(value, str) or not value):
            raise ValueError(f"flag {key!r} must be True, False or a variant name, not {value!r}")
    return dict(flags)


def _check_definitions(
    definitions: Iterable[Mapping[str, Any]], taken: Collection[str]
) -> list[dict[str, Any]]:
    """Copies of flag definitions in PostHog's local-evaluation shape, checked.

    Each needs a unique non-empty `key` (not one of `taken`), object `filters`
    if any, and payloads that are JSON-encoded strings, as PostHog sends them.
    """
    checked: list[dict[str, Any]] = []
    seen = set(taken)
    for index, definition in enumerate(definitions):
        key = definition.get("key") if isinstance(definition, Mapping) else None
        if not isinstance(key, str) or not key:
            raise ValueError(f"flag definition {index} is not an object with a non-empty 'key'")
        if key in seen:
            raise ValueError(f"flag {key!r} is defined more than once")
        seen.add(key)
        try:
            copied: dict[str, Any] = json.loads(json.dumps(definition, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"flag {key!r} is not JSON: {exc}") from None
        filters = copied.get("filters")
        if filters is not None and not isinstance(filters, dict):
            raise ValueError(f"flag {key!r}: 'filters' must be an object")
        payloads = (filters or {}).get("payloads") or {}
        if not isinstance(payloads, dict) or not all(
            isinstance(value, str) and _is_json(value) for value in payloads.values()
        ):
            raise ValueError(f"flag {key!r}: 'payloads' must map values to JSON-encoded strings")
        checked.append(copied)
    return checked


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _evaluate_definitions(
    definitions: Sequence[Mapping[str, Any]],
    group_type_mapping: Mapping[str, str],
    request: Mapping[str, Any],
) -> tuple[dict[str, FlagValue], dict[str, str]]:
    """Evaluate flag definitions for a flags request, with posthog-python's own matcher.

    The person and group properties are the request's, completed as
    posthog-python completes them for local evaluation (`distinct_id`,
    `$group_key`), so a remote answer agrees with a local evaluation of the
    same definitions. Returns the values and the payloads of enabled flags.
    """
    distinct_id = str(request["distinct_id"])
    person_properties = {"distinct_id": distinct_id, **_object(request.get("person_properties"))}
    groups = {name: str(key) for name, key in _object(request.get("groups")).items()}
    extra = _object(request.get("group_properties"))
    group_properties = {
        name: {"$group_key": key, **_object(extra.get(name))} for name, key in groups.items()
    }
    device_id = request.get("device_id") or request.get("$device_id")
    by_key = {flag["key"]: flag for flag in definitions}
    cache: dict[str, Any] = {}
    values: dict[str, FlagValue] = {}
    payloads: dict[str, str] = {}
    for flag in definitions:
        filters = flag.get("filters") or {}
        index = filters.get("aggregation_group_type_index")
        group = None if index is None else group_type_mapping.get(str(index))
        value: FlagValue = False
        try:
            if not flag.get("active"):
                pass
            elif index is None:
                bucketing = resolve_bucketing_value(flag, distinct_id, device_id)  # type: ignore[no-untyped-call]
                value = match_feature_flag_properties(
                    flag,
                    distinct_id,
                    person_properties,
                    cohort_properties={},
                    flags_by_key=by_key,
                    evaluation_cache=cache,
                    device_id=device_id,
                    bucketing_value=bucketing,
                    group_type_mapping=group_type_mapping,
                    groups=groups,
                    group_properties=group_properties,
                )
            elif group is not None and group in groups:
                # A group flag: bucketed by the group's key, on its properties.
                value = match_feature_flag_properties(
                    flag,
                    groups[group],
                    group_properties[group],
                    cohort_properties={},
                    flags_by_key=by_key,
                    evaluation_cache=cache,
                    device_id=device_id,
                    bucketing_value=groups[group],
                    group_type_mapping=group_type_mapping,
                    groups=groups,
                    group_properties=group_properties,
                )
        except (InconclusiveMatchError, RequiresServerEvaluation):
            # PostHog would look at what it stored about the person; the sink
            # stores nothing, so a condition it cannot decide does not match.
            value = False
        key = flag["key"]
        values[key] = value
        # Payloads are keyed by variant, or "true" for a boolean flag.
        payload = (filters.get("payloads") or {}).get("true" if value is True else value)
        if value is not False and payload is not None:
            payloads[key] = payload
    return values, payloads


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    tags = (tag.strip() for tag in if_none_match.split(","))
    return any(tag == "*" or tag.removeprefix("W/") == etag for tag in tags)


def _static_file(root: Path, relative: str) -> Path | None:
    """The file under `root` that a `/static/` path names, if any.

    The path is percent-decoded first; `..`, `.`, empty segments (so absolute
    paths) and backslashes are refused, and so is any file that resolves, through
    symlinks, outside `root`. A leading version segment (`1.449.2/surveys.js`) is
    dropped when the versioned file does not exist.
    """
    parts = unquote(relative).split("/")
    if any(part in ("", ".", "..") or "\\" in part or "\0" in part for part in parts):
        return None
    candidates = [parts]
    if len(parts) > 1 and _VERSION_SEGMENT.fullmatch(parts[0]):
        candidates.append(parts[1:])
    for candidate in candidates:
        try:
            path = root.joinpath(*candidate).resolve()
        except (OSError, RuntimeError):  # a symlink loop
            continue
        if path.is_relative_to(root) and path.is_file():
            return path
    return None


def _content_type(path: Path) -> str:
    known = _CONTENT_TYPES.get(path.suffix.lower())
    if known is not None:
        return known
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


@dataclass
class _Response:
    status: int
    content_type: str
    body: bytes | BinaryIO
    headers: dict[str, str] = field(default_factory=dict)


def _json_response(status: int, reply: Mapping[str, Any]) -> _Response:
    return _Response(status, "application/json", json.dumps(reply).encode())


class _Server(ThreadingHTTPServer):
    # Handler threads are joined by server_close(), so a stopped sink has no
    # request still writing; each is bounded by the handler's socket timeout.
    daemon_threads = False

    def __init__(self, address: tuple[str, int], sink: Sink) -> None:
        self.sink = sink
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that went away mid-request; the default prints to stderr.
        logger.debug("connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "posthog-identity-sink"
    # HTTP/1.0 (the base class default): one request per connection, so no idle
    # keep-alive connection outlives stop() on either side.
    protocol_version = "HTTP/1.0"
    timeout = 10.0

    def do_POST(self) -> None:
        self._handle(self._post)

    def do_GET(self) -> None:
        self._handle(self._get)

    def do_OPTIONS(self) -> None:
        # CORS preflight for posthog-js's JSON posts from another origin.
        self.send_response(HTTPStatus.NO_CONTENT)
        self._send_cors_headers()
        self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        requested = self.headers.get("Access-Control-Request-Headers", "Content-Type")
        self.send_header("Access-Control-Allow-Headers", requested)
        if self.headers.get("Access-Control-Request-Private-Network") == "true":
            # Chrome's Private Network Access: a public page posting to localhost.
            self.send_header("Access-Control-Allow-Private-Network", "true")
        self.send_header("Access-Control-Max-Age", "600")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer the base class's own errors (bad request line, 501...) in JSON."""
        self.log_error("code %d, message %s", code, message)
        detail = explain or message or HTTPStatus(code).phrase
        self._send(_json_response(code, _error_reply(code, HTTPStatus(code).name.lower(), detail)))

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - " + format, self.address_string(), *args)

    def _handle(self, route: Callable[[], _Response]) -> None:
        try:
            response = route()
        except _Rejected as exc:
            response = _json_response(exc.status, exc.reply)
        except Exception:
            logger.exception("sink failed on %s %s", self.command, self.path)
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            response = _json_response(
                status, _error_reply(status, "sink_error", "the sink failed; see its log")
            )
        self._send(response)

    def _post(self) -> _Response:
        # The body is read before anything else: answering without reading it
        # would make the client see a reset instead of the answer.
        body = self._read_body()
        url = urlsplit(self.path)
        path = url.path.rstrip("/")
        if path in _DEFINITIONS_PATHS:
            raise _Rejected(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", "use GET")
        if path not in _POST_ONLY:
            raise _not_found(url.path)
        sink = self.server.sink
        if path == _RECORDING_PATH:
            sink._record_recording()
            return _json_response(HTTPStatus.OK, {"status": 1})
        query = parse_qs(url.query)
        encoding = self.headers.get("Content-Encoding", "")
        data = _decode_body(body, encoding, query, sink.max_body_size)
        if path in _FLAGS_PATHS:
            request = _parse_flags_request(data)
            sink._record_flag_request(request)
            return _json_response(HTTPStatus.OK, sink._flags_reply(request, path, query))
        events = _parse_events(data, api_key=self._bearer_token())
        sink._record(events)
        if path == _V1_PATH:
            results = {e["uuid"]: {"result": "ok"} for e in events if "uuid" in e}
            return _json_response(HTTPStatus.OK, {"results": results})
        return _json_response(HTTPStatus.OK, {"status": 1})

    def _get(self) -> _Response:
        url = urlsplit(self.path)
        path = url.path
        sink = self.server.sink
        if path.rstrip("/") in _DEFINITIONS_PATHS:
            return sink._definitions_response(
                path,
                parse_qs(url.query, keep_blank_values=True),
                self._bearer_token(),
                self.headers.get("If-None-Match"),
            )
        if path.startswith(_STATIC_PREFIX):
            return sink._static_response(path[len(_STATIC_PREFIX) :])
        config = _CONFIG_PATH.fullmatch(path)
        if config is not None:
            return sink._remote_config_response(unquote(config[1]), script=bool(config[2]))
        if path.rstrip("/") in _POST_ONLY:
            raise _Rejected(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", "use POST")
        raise _not_found(path)

    def _read_body(self) -> bytes:
        declared = self.headers.get("Content-Length")
        if declared is None:
            raise _Rejected(
                HTTPStatus.LENGTH_REQUIRED,
                "length_required",
                "a Content-Length header is required",
            )
        try:
            length = int(declared)
        except ValueError:
            length = -1
        if length < 0:
            raise _Rejected(
                HTTPStatus.BAD_REQUEST,
                "invalid_request",
                f"invalid Content-Length {declared!r}",
            )
        limit = self.server.sink.max_body_size
        if length > limit:
            remaining = min(length, _MAX_DRAIN)
            while remaining > 0 and (chunk := self.rfile.read(min(remaining, _CHUNK))):
                remaining -= len(chunk)
            raise _Rejected(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                "too_large",
                f"body of {length} bytes exceeds {limit} bytes",
            )
        body = self.rfile.read(length)
        if len(body) < length:
            raise _Rejected(HTTPStatus.BAD_REQUEST, "invalid_request", "body ended early")
        return body

    def _bearer_token(self) -> str | None:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return token.strip() or None

    def _send_cors_headers(self) -> None:
        # posthog-js posts without credentials and loads its scripts with
        # crossorigin="anonymous": echoing the Origin covers both. No headers
        # when the request line itself could not be parsed.
        headers = getattr(self, "headers", None)
        origin = headers.get("Origin") if headers is not None else None
        if origin:
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Access-Control-Allow-Credentials", "true")
            self.send_header("Vary", "Origin")

    def _send(self, response: _Response) -> None:
        body = response.body
        try:
            length = len(body) if isinstance(body, bytes) else os.fstat(body.fileno()).st_size
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(length))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self._send_cors_headers()
            self.end_headers()
            if self.command == "HEAD":
                return
            if isinstance(body, bytes):
                self.wfile.write(body)
            else:
                shutil.copyfileobj(body, self.wfile, _CHUNK)
        finally:
            if not isinstance(body, bytes):
                body.close()


class Sink:
    """A local stand-in for PostHog's ingestion that keeps what it receives.

    Capture: `POST` to posthog-python's `/batch/` (plain or gzip JSON, its
    default), `/i/v0/ai/batch/` and `/i/v1/analytics/events` (gzip or deflate),
    and posthog-js's `/e/`, `/capture/` and `/i/v0/e/` (JSON, gzip as
    text/plain, `?compression=gzip-js` or `base64`), with a body that is one
    event, a list of events or a `{"batch": [...]}` envelope. Each event is kept
    as sent, plus the envelope's `api_key`.

    The rest of what posthog-js 1.449 talks to, each kept apart from the events:

    - `POST /flags/?v=2` (and posthog-python's `?v=4`, older clients'
      `/decide/`), in the same encodings: recorded (`flag_requests`) and
      answered with `flags`, in the shape the version asks for;
    - `GET /array/<token>/config.js` (a script) and `/array/<token>/config`
      (JSON): the remote config of a project with every product off;
      the token is recorded (`config_tokens`);
    - `GET /static/<path>` from `static_dir`, such as posthog-js's `dist/`;
      a version segment (`/static/1.449.2/surveys.js`) is optional;
    - `POST /s/` (session recordings): counted (`recording_count`), not kept.

    And what posthog-python asks with a personal API key for local evaluation:
    `GET /flags/definitions?token=<project key>&send_cohorts` (older clients:
    `/api/feature_flag/local_evaluation`), with `Authorization: Bearer <key>`,
    answered with `flag_definitions` as `{"flags": [...], "group_type_mapping":
    {...}, "cohorts": {}}` and an `ETag` (a matching `If-None-Match` gets a 304).
    No key or an invalid key gets a 401, a key without the flags scope a 403;
    each request is recorded (`definition_requests`). Given definitions,
    `/flags` evaluates them for the request's distinct id, person and group
    properties with posthog-python's own matcher, so remote and local
    evaluation agree.

    Cross-origin requests get CORS headers for their Origin. Bad requests get
    a JSON 4xx; nothing stops the server but `stop()`. A sink starts once.

    :param host: interface to listen on.
    :param port: port to listen on; 0 picks a free one (see `url`).
    :param jsonl_path: append each event to this file as one JSON line.
    :param on_event: called with a copy of each event; its errors are logged.
    :param max_body_size: larger bodies, compressed or not, get a 413.
    :param flags: the project's flags, every person getting the same value:
        `True`/`False`, or a variant name (on, with that variant).
    :param flag_payloads: a JSON value per flag of `flags`, sent when it is on.
    :param static_dir: the directory served under `/static/`; none by default.
    :param on_flag_request: called with a copy of each flags request's body;
        its errors are logged.
    :param flag_definitions: flags in the shape of PostHog's local-evaluation
        API (see `EXAMPLE_FLAG_DEFINITIONS`), evaluated per person; their keys
        must differ from those of `flags`.
    :param group_type_mapping: group type index (a string) -> group type name,
        for definitions aggregated by group.
    :param personal_api_keys: the valid personal API keys (others get a 401);
        by default any Bearer key is valid.
    :param unscoped_personal_api_keys: valid keys without the `feature_flag:read`
        scope: they get a 403, as from PostHog.
    :raises ValueError: for a flag value or payload key that is not one of these,
        or a flag definition that is not a JSON object with a unique key.
    :raises NotADirectoryError: when `static_dir` is not a directory.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        jsonl_path: str | os.PathLike[str] | None = None,
        on_event: Callable[[Event], None] | None = None,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        flags: Mapping[str, FlagValue] | None = None,
        flag_payloads: Mapping[str, Any] | None = None,
        static_dir: str | os.PathLike[str] | None = None,
        on_flag_request: Callable[[dict[str, Any]], None] | None = None,
        flag_definitions: Iterable[Mapping[str, Any]] | None = None,
        group_type_mapping: Mapping[str, str] | None = None,
        personal_api_keys: Collection[str] | None = None,
        unscoped_personal_api_keys: Collection[str] = (),
    ) -> None:
        self.max_body_size = max_body_size
        self._address = (host, port)
        self._jsonl_path = jsonl_path
        self._on_event = on_event
        self._on_flag_request = on_flag_request
        self._flags = _check_flags(flags or {})
        unknown = sorted(set(flag_payloads or {}) - set(self._flags))
        if unknown:
            raise ValueError(f"flag_payloads for flags that are not in flags: {unknown}")
        # PostHog sends payloads JSON-encoded; posthog-js parses them back.
        self._payloads = {key: json.dumps(value) for key, value in (flag_payloads or {}).items()}
        self._definitions = _check_definitions(flag_definitions or (), self._flags)
        self._group_type_mapping = {str(k): str(v) for k, v in (group_type_mapping or {}).items()}
        if isinstance(personal_api_keys, str) or isinstance(unscoped_personal_api_keys, str):
            raise ValueError("personal API keys must be given as a collection, not one string")
        self._personal_api_keys = (
            None if personal_api_keys is None else frozenset(personal_api_keys)
        )
        self._unscoped_keys = frozenset(unscoped_personal_api_keys)
        self._definitions_body = json.dumps(
            {
                "flags": self._definitions,
                "group_type_mapping": self._group_type_mapping,
                "cohorts": {},
            }
        ).encode()
        self._definitions_etag = f'"{hashlib.sha256(self._definitions_body).hexdigest()[:32]}"'
        self._definition_requests: list[dict[str, Any]] = []
        self._static_dir: Path | None = None
        if static_dir is not None:
            self._static_dir = Path(static_dir).resolve()
            if not self._static_dir.is_dir():
                raise NotADirectoryError(f"static_dir is not a directory: {static_dir}")
        self._events: list[Event] = []
        self._flag_requests: list[dict[str, Any]] = []
        self._config_tokens: list[str] = []
        self._recordings = 0
        self._changed = threading.Condition()
        self._lifecycle = threading.Lock()
        self._running: tuple[_Server, threading.Thread] | None = None
        self._jsonl: IO[str] | None = None
        self._bound: tuple[str, int] | None = None

    @property
    def url(self) -> str:
        """The base URL to give a client as its host, e.g. `http://127.0.0.1:54321`."""
        if self._bound is None:
            raise RuntimeError("the sink has no address until it is started")
        host, port = self._bound
        return f"http://{host}:{port}"

    def start(self) -> Sink:
        """Bind, open the JSONL file and serve from a background thread."""
        with self._lifecycle:
            if self._bound is not None:
                raise RuntimeError("a Sink can be started only once")
            server = _Server(self._address, self)
            try:
                if self._jsonl_path is not None:
                    self._jsonl = open(self._jsonl_path, "a", encoding="utf-8")  # noqa: SIM115
            except BaseException:
                server.server_close()
                raise
            self._bound = (str(server.server_address[0]), int(server.server_address[1]))
            thread = threading.Thread(
                target=server.serve_forever,
                # Also how long stop() waits for the loop to notice.
                kwargs={"poll_interval": 0.05},
                name=f"posthog-identity-sink:{self._bound[1]}",
                daemon=True,
            )
            thread.start()
            self._running = (server, thread)
        return self

    def stop(self) -> None:
        """Stop serving, finish in-flight requests and release the port and file."""
        with self._lifecycle:
            running, self._running = self._running, None
            if running is None:
                return
            server, thread = running
            server.shutdown()
            server.server_close()
            thread.join()
            if self._jsonl is not None:
                self._jsonl.close()

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def events(self, event: str | None = None, distinct_id: str | None = None) -> list[Event]:
        """A copy of the events received so far, in arrival order, filtered."""
        with self._changed:
            return copy.deepcopy(self._matching(event, distinct_id))

    def flag_requests(self) -> list[dict[str, Any]]:
        """A copy of the flags requests' bodies received so far, decoded, in arrival order."""
        with self._changed:
            return copy.deepcopy(self._flag_requests)

    def definition_requests(self) -> list[dict[str, Any]]:
        """The flag definitions requests so far, in arrival order.

        Each is `{"path", "token", "personal_api_key", "if_none_match", "status"}`:
        what the client sent (None when absent) and the status it got.
        """
        with self._changed:
            return copy.deepcopy(self._definition_requests)

    def config_tokens(self) -> list[str]:
        """The project token of each remote config request so far, in arrival order."""
        with self._changed:
            return list(self._config_tokens)

    def recording_count(self) -> int:
        """How many session recording requests (`POST /s/`) arrived so far."""
        with self._changed:
            return self._recordings

    def wait_for(
        self,
        predicate: Predicate | None = None,
        *,
        count: int | None = None,
        event: str | None = None,
        timeout: float = 10.0,
    ) -> list[Event]:
        """Block until the events named `event` (all, by default) are enough.

        Enough means at least `count` of them and `predicate(events)` true;
        with neither given, at least one. Returns a copy of those events.

        :raises TimeoutError: after `timeout` seconds, listing what arrived.
        """
        needed = 1 if count is None and predicate is None else count

        def satisfied() -> bool:
            found = self._matching(event)
            if needed is not None and len(found) < needed:
                return False
            return predicate is None or predicate(copy.deepcopy(found))

        with self._changed:
            if self._changed.wait_for(satisfied, timeout):
                return copy.deepcopy(self._matching(event))
            wanted = [f"at least {needed} event(s)" if needed else "events"]
            if event is not None:
                wanted.append(f"named {event!r}")
            if predicate is not None:
                wanted.append("matching the predicate")
            arrived = [(e["event"], _distinct_id(e)) for e in self._events]
            raise TimeoutError(
                f"timed out after {timeout}s waiting for {' '.join(wanted)} at "
                f"{self.url}; {len(arrived)} event(s) arrived, as (event, "
                f"distinct_id): {arrived}"
            )

    def clear(self) -> None:
        """Forget everything received so far: events, flags, definitions and config
        requests, recordings."""
        with self._changed:
            self._events.clear()
            self._flag_requests.clear()
            self._definition_requests.clear()
            self._config_tokens.clear()
            self._recordings = 0

    def _matching(self, event: str | None = None, distinct_id: str | None = None) -> list[Event]:
        return [
            e
            for e in self._events
            if (event is None or e["event"] == event)
            and (distinct_id is None or _distinct_id(e) == distinct_id)
        ]

    def _record(self, events: list[Event]) -> None:
        with self._changed:
            self._events.extend(events)
            if self._jsonl is not None:
                for event in events:
                    self._jsonl.write(json.dumps(event) + "\n")
                self._jsonl.flush()
            self._changed.notify_all()
        if self._on_event is None:
            return
        for event in events:
            try:
                self._on_event(copy.deepcopy(event))
            except Exception:
                logger.exception("on_event failed for %r", event["event"])

    def _record_flag_request(self, request: dict[str, Any]) -> None:
        with self._changed:
            self._flag_requests.append(request)
            self._changed.notify_all()
        if self._on_flag_request is None:
            return
        try:
            self._on_flag_request(copy.deepcopy(request))
        except Exception:
            logger.exception("on_flag_request failed for %r", request["distinct_id"])

    def _record_recording(self) -> None:
        with self._changed:
            self._recordings += 1
            self._changed.notify_all()

    def _flags_reply(
        self, request: Mapping[str, Any], path: str, query: Mapping[str, list[str]]
    ) -> dict[str, Any]:
        flags, payloads = dict(self._flags), dict(self._payloads)
        ids = {key: index for index, key in enumerate(flags, start=1)}
        if self._definitions:
            values, matched = _evaluate_definitions(
                self._definitions, self._group_type_mapping, request
            )
            flags.update(values)
            payloads.update(matched)
            for position, definition in enumerate(self._definitions, start=len(ids) + 1):
                given = definition.get("id")
                if isinstance(given, bool) or not isinstance(given, int):
                    given = position
                ids[definition["key"]] = given
        return _flags_reply(flags, payloads, request, path=path, query=query, ids=ids)

    def _definitions_response(
        self,
        path: str,
        query: Mapping[str, list[str]],
        key: str | None,
        if_none_match: str | None,
    ) -> _Response:
        token = query.get("token", [""])[-1]
        rejected: _Rejected | None = None
        if key is None:
            rejected = _Rejected(
                HTTPStatus.UNAUTHORIZED,
                "not_authenticated",
                "flag definitions need a personal API key (Authorization: Bearer ...)",
            )
        elif key in self._unscoped_keys:
            rejected = _Rejected(
                HTTPStatus.FORBIDDEN,
                "permission_denied",
                "API key missing required scope 'feature_flag:read'",
            )
        elif self._personal_api_keys is not None and key not in self._personal_api_keys:
            rejected = _Rejected(
                HTTPStatus.UNAUTHORIZED,
                "authentication_failed",
                "Personal API key found in request Authorization header is invalid.",
            )
        elif not token:
            rejected = _Rejected(
                HTTPStatus.BAD_REQUEST,
                "invalid_request",
                "the token query parameter (the project API key) is required",
            )
        unchanged = rejected is None and _etag_matches(if_none_match, self._definitions_etag)
        status = rejected.status if rejected else (304 if unchanged else 200)
        with self._changed:
            self._definition_requests.append(
                {
                    "path": path,
                    "token": token or None,
                    "personal_api_key": key,
                    "if_none_match": if_none_match,
                    "status": int(status),
                }
            )
            self._changed.notify_all()
        if rejected is not None:
            raise rejected
        headers = {"ETag": self._definitions_etag}
        body = b"" if unchanged else self._definitions_body
        return _Response(status, "application/json", body, headers)

    def _remote_config_response(self, token: str, *, script: bool) -> _Response:
        with self._changed:
            self._config_tokens.append(token)
            self._changed.notify_all()
        has_flags = bool(self._flags or self._definitions)
        config = _remote_config(token, has_feature_flags=has_flags)
        if script:
            return _Response(
                HTTPStatus.OK, _JAVASCRIPT, _remote_config_script(token, config).encode()
            )
        return _json_response(HTTPStatus.OK, config)

    def _static_response(self, relative: str) -> _Response:
        found = None if self._static_dir is None else _static_file(self._static_dir, relative)
        if found is None:
            raise _not_found(_STATIC_PREFIX + relative)
        try:
            body = found.open("rb")
        except OSError:  # gone since it was found
            raise _not_found(_STATIC_PREFIX + relative) from None
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
        return _Response(HTTPStatus.OK, _content_type(found), body, headers)


# -- the command line ------------------------------------------------------------


def _show(value: Any) -> str:
    # One value on one line: plain when it is a plain word, else as JSON
    # (which escapes line breaks, spaces show as quoted, non-ASCII as \u).
    plain = isinstance(value, str) and value.isascii() and value.isprintable()
    if plain and value and " " not in value:
        return str(value)
    return json.dumps(value)


def format_event(event: Mapping[str, Any]) -> str:
    """One line for an event: local time, name, distinct id, and the linked id.

    `$create_alias` shows its `alias`, `$identify` its `$anon_distinct_id`: the
    anonymous id merged into the person. Values with spaces or line breaks are
    shown as JSON strings, so the line stays one line.
    """
    name = event.get("event")
    line = f"{time.strftime('%H:%M:%S')} {_show(name)} distinct_id={_show(_distinct_id(event))}"
    properties = event.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    linked = {"$create_alias": "alias", "$identify": "$anon_distinct_id"}.get(str(name))
    if linked is not None and linked in properties:
        line += f" {linked}={_show(properties[linked])}"
    return line


def _format_flag_request(request: Mapping[str, Any]) -> str:
    return f"{time.strftime('%H:%M:%S')} flags? distinct_id={_show(request.get('distinct_id'))}"


def main(argv: Sequence[str] | None = None) -> int:
    """`posthog-identity sink`: serve a `Sink` until SIGINT or SIGTERM.

    Prints `PostHog sink listening on http://HOST:PORT`, then one line per
    event and per flags request as they arrive. Returns 0 once stopped, 1 when
    it cannot start (port taken, JSONL file or static directory unusable).
    """
    from .cli import port_number

    parser = argparse.ArgumentParser(
        prog="posthog-identity sink",
        description="A local stand-in for PostHog's ingestion: prints what it receives.",
        epilog="exit codes:\n  0  stopped\n  1  could not start (port in use, unusable file)\n"
        "  2  usage error: bad option or port number",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: %(default)s)")
    parser.add_argument(
        "--port", type=port_number, default=8010, help="0 picks one (default: %(default)s)"
    )
    parser.add_argument("--jsonl", metavar="FILE", help="also append each event to FILE")
    parser.add_argument("--static-dir", metavar="DIR", help="serve DIR at /static/")
    parser.add_argument(
        "--example-flags",
        action="store_true",
        help="serve two example flags (beta-banner, checkout-experiment) for /flags "
        "and for local evaluation with any personal API key",
    )
    args = parser.parse_args(argv)

    printing = threading.Lock()

    def say(line: str) -> None:
        with printing:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    stopping: list[int] = []

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    # A flag, polled: a signal handler must not take a lock the main thread may hold.
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            sink = Sink(
                args.host,
                args.port,
                jsonl_path=args.jsonl,
                static_dir=args.static_dir,
                flag_definitions=EXAMPLE_FLAG_DEFINITIONS if args.example_flags else None,
                on_event=lambda event: say(format_event(event)),
                on_flag_request=lambda request: say(_format_flag_request(request)),
            ).start()
        except OSError as exc:
            print(f"posthog-identity sink: cannot start: {exc}", file=sys.stderr)
            return 1
        try:
            say(f"PostHog sink listening on {sink.url}")
            while not stopping:
                time.sleep(0.1)
        finally:
            sink.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
