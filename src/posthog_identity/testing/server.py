"""`Sink`: a local stand-in for PostHog's ingestion that keeps what it receives.

A WSGI app on werkzeug's request and response, served by werkzeug's threaded
server on a background thread. The protocol lives in `protocol`, the flags in
`flags`, what arrived in `recorder`; this module routes and serves.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from werkzeug.serving import ThreadedWSGIServer
from werkzeug.wrappers import Request, Response

from . import protocol
from .flags import FlagBook, FlagValue, LocalEvaluator, flags_reply
from .protocol import DEFAULT_MAX_BODY_SIZE, Event, Rejected, error_reply
from .recorder import Predicate, Recorder
from .remote_config import remote_config, remote_config_script
from .serving import make_server
from .static import file_response, static_file

if TYPE_CHECKING:
    from types import TracebackType

    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["Sink"]

logger = logging.getLogger("posthog_identity.testing")

# posthog-js's remote config: a script first, JSON when the script gave nothing.
_CONFIG_PATH = re.compile(r"/array/([^/]+)/config(\.js)?/?")
_STATIC_PREFIX = "/static/"
# A body over the cap is still read (and dropped) up to this size so the client
# gets the 413 instead of a connection reset.
_MAX_DRAIN = 4 * DEFAULT_MAX_BODY_SIZE
_CHUNK = 64 * 1024
# The project key the sink's own flag evaluator asks with.
_EVALUATOR_TOKEN = "phc_posthog_identity_sink"


def _json_response(status: int, reply: Mapping[str, Any]) -> Response:
    return Response(json.dumps(reply), status, content_type="application/json")


def _not_found(path: str) -> Rejected:
    return Rejected(HTTPStatus.NOT_FOUND, "not_found", f"no endpoint at {path}")


def _last(request: Request, name: str) -> str:
    """A query parameter's last value, or ""."""
    values = request.args.getlist(name)
    return values[-1] if values else ""


def _raw_path(request: Request) -> str:
    """The path as sent, before percent-decoding (werkzeug's server keeps it)."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    return urlsplit(raw).path if isinstance(raw, str) else quote(request.path)


def _bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _read_body(request: Request, limit: int) -> bytes:
    """The request's body, exactly its Content-Length, at most `limit` bytes."""
    declared = request.headers.get("Content-Length") or None
    if declared is None:
        raise Rejected(
            HTTPStatus.LENGTH_REQUIRED, "length_required", "a Content-Length header is required"
        )
    try:
        length = int(declared)
    except ValueError:
        length = -1
    if length < 0:
        raise Rejected(
            HTTPStatus.BAD_REQUEST, "invalid_request", f"invalid Content-Length {declared!r}"
        )
    stream = request.input_stream
    if length > limit:
        remaining = min(length, _MAX_DRAIN)
        while remaining > 0 and (chunk := stream.read(min(remaining, _CHUNK))):
            remaining -= len(chunk)
        raise Rejected(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            "too_large",
            f"body of {length} bytes exceeds {limit} bytes",
        )
    body = stream.read(length)
    if len(body) < length:
        raise Rejected(HTTPStatus.BAD_REQUEST, "invalid_request", "body ended early")
    return body


def _add_cors_headers(request: Request, response: Response) -> None:
    # posthog-js posts without credentials and loads its scripts with
    # crossorigin="anonymous": echoing the Origin covers both.
    origin = request.headers.get("Origin")
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.vary.add("Origin")


def _preflight(request: Request) -> Response:
    # CORS preflight for posthog-js's JSON posts from another origin.
    response = Response(status=HTTPStatus.NO_CONTENT)
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    requested = request.headers.get("Access-Control-Request-Headers", "Content-Type")
    response.headers["Access-Control-Allow-Headers"] = requested
    if request.headers.get("Access-Control-Request-Private-Network") == "true":
        # Chrome's Private Network Access: a public page posting to localhost.
        response.headers["Access-Control-Allow-Private-Network"] = "true"
    response.headers["Access-Control-Max-Age"] = "600"
    return response


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
    properties with posthog-python's own local evaluation, so remote and local
    evaluation agree.

    Cross-origin requests get CORS headers for their Origin. Bad requests get
    a JSON 4xx; nothing stops the server but `stop()`. `HEAD` is answered as
    `GET`, without the body. A sink starts once.

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
        self._book = FlagBook.build(flags, flag_payloads, flag_definitions, group_type_mapping)
        if isinstance(personal_api_keys, str) or isinstance(unscoped_personal_api_keys, str):
            raise ValueError("personal API keys must be given as a collection, not one string")
        self._personal_api_keys = (
            None if personal_api_keys is None else frozenset(personal_api_keys)
        )
        self._unscoped_keys = frozenset(unscoped_personal_api_keys)
        # The key of the sink's own evaluator; its requests are not recorded.
        self._evaluator_key = f"phx_posthog_identity_sink_{secrets.token_hex(8)}"
        self._evaluator: tuple[FlagBook, LocalEvaluator] | None = None
        self._static_dir: Path | None = None
        if static_dir is not None:
            self._static_dir = Path(static_dir).resolve()
            if not self._static_dir.is_dir():
                raise NotADirectoryError(f"static_dir is not a directory: {static_dir}")
        self._recorder = Recorder(on_event=on_event, on_flag_request=on_flag_request)
        self._flags_lock = threading.Lock()
        self._evaluator_lock = threading.Lock()
        self._lifecycle = threading.Lock()
        self._running: tuple[ThreadedWSGIServer, threading.Thread] | None = None
        self._jsonl: IO[str] | None = None
        self._bound: tuple[str, int] | None = None

    # -- lifecycle ------------------------------------------------------------------

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
            host, port = self._address
            server = make_server(host, port, self)
            try:
                if self._jsonl_path is not None:
                    self._jsonl = open(self._jsonl_path, "a", encoding="utf-8")  # noqa: SIM115
            except BaseException:
                server.server_close()
                raise
            self._recorder.jsonl = self._jsonl
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
            thread.join()  # serve_forever closes the server, joining its handlers
            with self._evaluator_lock:
                evaluator, self._evaluator = self._evaluator, None
            if evaluator is not None:
                evaluator[1].close()
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

    # -- what arrived ---------------------------------------------------------------

    def events(self, event: str | None = None, distinct_id: str | None = None) -> list[Event]:
        """A copy of the events received so far, in arrival order, filtered."""
        return self._recorder.events(event, distinct_id)

    def flag_requests(self) -> list[dict[str, Any]]:
        """A copy of the flags requests' bodies received so far, decoded, in arrival order."""
        return self._recorder.flag_requests()

    def definition_requests(self) -> list[dict[str, Any]]:
        """The flag definitions requests so far, in arrival order.

        Each is `{"path", "token", "personal_api_key", "if_none_match", "status"}`:
        what the client sent (None when absent) and the status it got.
        """
        return self._recorder.definition_requests()

    def config_tokens(self) -> list[str]:
        """The project token of each remote config request so far, in arrival order."""
        return self._recorder.config_tokens()

    def recording_count(self) -> int:
        """How many session recording requests (`POST /s/`) arrived so far."""
        return self._recorder.recording_count()

    def wait_for(
        self,
        predicate: Predicate | None = None,
        *,
        count: int | None = None,
        event: str | None = None,
        distinct_id: str | None = None,
        timeout: float = 10.0,
    ) -> list[Event]:
        """Block until the events named `event` (all, by default) are enough.

        Enough means at least `count` of them and `predicate(events)` true;
        with neither given, at least one. Returns a copy of those events.

        :raises TimeoutError: after `timeout` seconds, listing what arrived.
        """
        found = self._recorder.wait_for(
            predicate, count=count, event=event, distinct_id=distinct_id, timeout=timeout
        )
        if found is not None:
            return found
        needed = 1 if count is None and predicate is None else count
        wanted = [f"at least {needed} event(s)" if needed else "events"]
        if event is not None:
            wanted.append(f"named {event!r}")
        if distinct_id is not None:
            wanted.append(f"for distinct_id {distinct_id!r}")
        if predicate is not None:
            wanted.append("matching the predicate")
        raise TimeoutError(
            f"timed out after {timeout}s waiting for {' '.join(wanted)} at "
            f"{self.url}; {self._recorder.arrivals()}"
        )

    def clear(self) -> None:
        """Forget everything received so far: events, flags, definitions and config
        requests, recordings."""
        self._recorder.clear()

    def serve_flags(
        self,
        flags: Mapping[str, FlagValue] | None = None,
        *,
        flag_payloads: Mapping[str, Any] | None = None,
        flag_definitions: Iterable[Mapping[str, Any]] | None = None,
        group_type_mapping: Mapping[str, str] | None = None,
    ) -> None:
        """Replace the flags served from now on, as the constructor's options of
        the same names; nothing given serves no flags.

        :raises ValueError: as the constructor does, leaving the served flags as they were.
        """
        book = FlagBook.build(flags, flag_payloads, flag_definitions, group_type_mapping)
        with self._flags_lock:
            self._book = book

    # -- the WSGI app -----------------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        try:
            response = self._route(request)
        except Rejected as exc:
            response = _json_response(exc.status, exc.reply)
        except Exception:
            logger.exception("sink failed on %s %s", request.method, request.path)
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            response = _json_response(
                status, error_reply(status, "sink_error", "the sink failed; see its log")
            )
        _add_cors_headers(request, response)
        return response(environ, start_response)

    def _route(self, request: Request) -> Response:
        if request.method == "POST":
            return self._post(request)
        if request.method in ("GET", "HEAD"):
            # werkzeug's Response sends no body to a HEAD: the headers are GET's.
            return self._get(request)
        if request.method == "OPTIONS":
            return _preflight(request)
        raise Rejected(
            HTTPStatus.NOT_IMPLEMENTED, "not_implemented", f"unsupported method {request.method!r}"
        )

    def _post(self, request: Request) -> Response:
        # The body is read before anything else: answering without reading it
        # would make the client see a reset instead of the answer.
        body = _read_body(request, self.max_body_size)
        path = request.path.rstrip("/")
        if path in protocol.DEFINITIONS_PATHS:
            raise Rejected(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", "use GET")
        if path not in protocol.POST_ONLY_PATHS:
            raise _not_found(request.path)
        if path == protocol.RECORDING_PATH:
            self._recorder.recording_arrived()
            return _json_response(HTTPStatus.OK, {"status": 1})
        data = protocol.decode_body(
            body,
            request.headers.get("Content-Encoding", ""),
            _last(request, "compression"),
            self.max_body_size,
        )
        if path in protocol.FLAGS_PATHS:
            flags_request = protocol.parse_flags_request(data)
            self._recorder.flag_request_arrived(flags_request)
            return _json_response(HTTPStatus.OK, self._flags_reply(flags_request, path, request))
        events = protocol.parse_events(data, api_key=_bearer_token(request))
        self._record(events)
        if path == protocol.CAPTURE_V1_PATH:
            results = {e["uuid"]: {"result": "ok"} for e in events if "uuid" in e}
            return _json_response(HTTPStatus.OK, {"results": results})
        return _json_response(HTTPStatus.OK, {"status": 1})

    def _get(self, request: Request) -> Response:
        path = request.path
        if path.rstrip("/") in protocol.DEFINITIONS_PATHS:
            return self._definitions_response(request)
        if path.startswith(_STATIC_PREFIX):
            return self._static_response(request, path[len(_STATIC_PREFIX) :])
        # On the raw path: a token may hold an escaped `/`.
        config = _CONFIG_PATH.fullmatch(_raw_path(request))
        if config is not None:
            return self._remote_config_response(unquote(config[1]), script=bool(config[2]))
        if path.rstrip("/") in protocol.POST_ONLY_PATHS:
            raise Rejected(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", "use POST")
        raise _not_found(path)

    def _record(self, events: list[Event]) -> None:
        self._recorder.events_arrived(events)

    # -- flags --------------------------------------------------------------------------

    def _flags_reply(
        self, flags_request: Mapping[str, Any], path: str, request: Request
    ) -> dict[str, Any]:
        book, evaluator = self._current_flags()
        flags: dict[str, FlagValue] = dict(book.flags)
        payloads = dict(book.payloads)
        if evaluator is not None:
            evaluated = evaluator.evaluate(flags_request)
            for definition in book.definitions:
                key = definition["key"]
                flags[key] = evaluated.get(key, False)
                payload = book.payload_for(key, flags[key])
                if payload is not None:
                    payloads[key] = payload
        try:
            version = int(_last(request, "v"))
        except ValueError:
            version = 1
        with_config = _last(request, "config") == "true"
        return flags_reply(
            flags,
            payloads,
            book.ids(),
            flags_request,
            decide=path == "/decide",
            version=version,
            with_config=with_config,
        )

    def _current_flags(self) -> tuple[FlagBook, LocalEvaluator | None]:
        """The served book, and an evaluator loaded with its definitions if it has any."""
        with self._flags_lock:
            book = self._book
        if not book.definitions:
            return book, None
        with self._evaluator_lock:
            current = self._evaluator
            if current is not None and current[0] is book:
                return book, current[1]
            if current is not None:
                current[1].close()
            # Loaded over HTTP from this very sink: another server thread
            # answers, taking only the flags lock.
            evaluator = LocalEvaluator(self.url, _EVALUATOR_TOKEN, self._evaluator_key)
            self._evaluator = (book, evaluator)
            return book, evaluator

    def _definitions_response(self, request: Request) -> Response:
        token = _last(request, "token")
        key = _bearer_token(request)
        with self._flags_lock:
            book = self._book
        if key == self._evaluator_key:
            return self._definitions_body(request, book)
        rejected = self._refusal(key, token)
        if rejected is not None:
            self._definitions_request_arrived(request, key, token, rejected.status)
            raise rejected
        response = self._definitions_body(request, book)
        self._definitions_request_arrived(request, key, token, response.status_code)
        return response

    def _definitions_request_arrived(
        self, request: Request, key: str | None, token: str, status: int
    ) -> None:
        self._recorder.definition_request_arrived(
            {
                "path": request.path,
                "token": token or None,
                "personal_api_key": key,
                "if_none_match": request.headers.get("If-None-Match"),
                "status": status,
            }
        )

    def _refusal(self, key: str | None, token: str) -> Rejected | None:
        """Why PostHog would refuse a definitions request with this key and token, if it would."""
        if key is None:
            return Rejected(
                HTTPStatus.UNAUTHORIZED,
                "not_authenticated",
                "flag definitions need a personal API key (Authorization: Bearer ...)",
            )
        if key in self._unscoped_keys:
            return Rejected(
                HTTPStatus.FORBIDDEN,
                "permission_denied",
                "API key missing required scope 'feature_flag:read'",
            )
        if self._personal_api_keys is not None and key not in self._personal_api_keys:
            return Rejected(
                HTTPStatus.UNAUTHORIZED,
                "authentication_failed",
                "Personal API key found in request Authorization header is invalid.",
            )
        if not token:
            return Rejected(
                HTTPStatus.BAD_REQUEST,
                "invalid_request",
                "the token query parameter (the project API key) is required",
            )
        return None

    @staticmethod
    def _definitions_body(request: Request, book: FlagBook) -> Response:
        if request.if_none_match.contains_weak(book.etag):
            response = Response(status=HTTPStatus.NOT_MODIFIED, content_type="application/json")
        else:
            response = Response(book.definitions_body, content_type="application/json")
        response.set_etag(book.etag)
        return response

    # -- posthog-js's other requests ----------------------------------------------------

    def _remote_config_response(self, token: str, *, script: bool) -> Response:
        self._recorder.config_request_arrived(token)
        with self._flags_lock:
            has_flags = self._book.has_flags
        config = remote_config(token, has_feature_flags=has_flags)
        if script:
            return Response(remote_config_script(token, config), mimetype="application/javascript")
        return _json_response(HTTPStatus.OK, config)

    def _static_response(self, request: Request, relative: str) -> Response:
        found = None if self._static_dir is None else static_file(self._static_dir, relative)
        response = None if found is None else file_response(request, found)
        if response is None:
            raise _not_found(_STATIC_PREFIX + relative)
        return response
