"""A local PostHog ingestion endpoint that keeps what it receives.

For the demo, for development and for tests: point a real posthog client (or
posthog-js) at `Sink.url` and inspect the events it sent, instead of mocking
the client. It speaks the endpoints and body encodings the real clients use
(see `Sink`), on a small standard-library HTTP server in a background thread.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import logging
import threading
import zlib
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    import os
    from types import TracebackType

__all__ = ["DEFAULT_MAX_BODY_SIZE", "Sink"]

logger = logging.getLogger(__name__)

#: PostHog's own cap on a request body, compressed or not.
DEFAULT_MAX_BODY_SIZE = 20 * 1024 * 1024

Event = dict[str, Any]
Predicate = Callable[[list[Event]], bool]

# Legacy (v0) capture endpoints, compared without their trailing slash:
# posthog-python's `/batch/` and AI lane, posthog-js's `/e/` and older aliases.
_V0_PATHS = frozenset({"/batch", "/i/v0/ai/batch", "/e", "/capture", "/i/v0/e"})
# posthog-python's opt-in capture v1 (`capture_mode="v1"`): Bearer auth and a
# per-event `results` map in the response.
_V1_PATH = "/i/v1/analytics/events"

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
    kind = "server_error" if status >= 500 else "invalid_request"
    return {"type": kind, "code": code, "detail": detail}


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
    parameter decides, and a gzip magic number is recognised on its own.
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
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise _Rejected(
            HTTPStatus.BAD_REQUEST, "invalid_payload", f"malformed JSON: {exc}"
        ) from None
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
        try:
            status, reply = self._ingest()
        except _Rejected as exc:
            status, reply = exc.status, exc.reply
        except Exception:
            logger.exception("sink failed on %s %s", self.command, self.path)
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            reply = _error_reply(status, "sink_error", "the sink failed; see its log")
        self._send_json(status, reply)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        if path in _V0_PATHS or path == _V1_PATH:
            self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, explain="use POST")
        else:
            self.send_error(HTTPStatus.NOT_FOUND, explain=f"no endpoint at {path}")

    def do_OPTIONS(self) -> None:
        # CORS preflight for posthog-js's JSON posts from another origin.
        self.send_response(HTTPStatus.NO_CONTENT)
        self._send_cors_headers()
        self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
        requested = self.headers.get("Access-Control-Request-Headers", "Content-Type")
        self.send_header("Access-Control-Allow-Headers", requested)
        self.send_header("Access-Control-Max-Age", "600")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer the base class's own errors (bad request line, 501...) in JSON."""
        self.log_error("code %d, message %s", code, message)
        detail = explain or message or HTTPStatus(code).phrase
        self._send_json(code, _error_reply(code, HTTPStatus(code).name.lower(), detail))

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - " + format, self.address_string(), *args)

    def _ingest(self) -> tuple[int, dict[str, Any]]:
        # The body is read before anything else: answering without reading it
        # would make the client see a reset instead of the answer.
        body = self._read_body()
        url = urlsplit(self.path)
        path = url.path.rstrip("/")
        if path not in _V0_PATHS and path != _V1_PATH:
            raise _Rejected(HTTPStatus.NOT_FOUND, "not_found", f"no capture endpoint at {url.path}")
        limit = self.server.sink.max_body_size
        encoding = self.headers.get("Content-Encoding", "")
        data = _decode_body(body, encoding, parse_qs(url.query), limit)
        events = _parse_events(data, api_key=self._bearer_token())
        self.server.sink._record(events)
        if path == _V1_PATH:
            results = {e["uuid"]: {"result": "ok"} for e in events if "uuid" in e}
            return HTTPStatus.OK, {"results": results}
        return HTTPStatus.OK, {"status": 1}

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
        # No headers when the request line itself could not be parsed.
        headers = getattr(self, "headers", None)
        origin = headers.get("Origin") if headers is not None else None
        if origin:
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Access-Control-Allow-Credentials", "true")
            self.send_header("Vary", "Origin")

    def _send_json(self, status: int, reply: dict[str, Any]) -> None:
        body = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self._send_cors_headers()
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class Sink:
    """A local PostHog ingestion endpoint that keeps the events it receives.

    Accepts `POST` to posthog-python's `/batch/` (plain or gzip JSON, its
    default), `/i/v0/ai/batch/` and `/i/v1/analytics/events` (gzip or deflate),
    and posthog-js's `/e/`, `/capture/` and `/i/v0/e/` (JSON, `?compression=
    gzip-js` or `base64`), with a body that is one event, a list of events or a
    `{"batch": [...]}` envelope. Each event is kept as sent, plus the envelope's
    `api_key`. Bad bodies get a JSON 4xx; nothing stops the server but `stop()`.
    A sink starts once.

    :param host: interface to listen on.
    :param port: port to listen on; 0 picks a free one (see `url`).
    :param jsonl_path: append each event to this file as one JSON line.
    :param on_event: called with a copy of each event; its errors are logged.
    :param max_body_size: larger bodies, compressed or not, get a 413.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        jsonl_path: str | os.PathLike[str] | None = None,
        on_event: Callable[[Event], None] | None = None,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    ) -> None:
        self.max_body_size = max_body_size
        self._address = (host, port)
        self._jsonl_path = jsonl_path
        self._on_event = on_event
        self._events: list[Event] = []
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
        """Forget the events received so far."""
        with self._changed:
            self._events.clear()

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
