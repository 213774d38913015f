"""Per-request cost in process: the app is called directly, no server, no sockets.

ASGI apps are awaited in a loop inside one coroutine with a prebuilt scope,
`receive` and a `send` that drops messages; WSGI apps are called with a prebuilt
environ and their body is iterated and closed, as a server would. Every case
gets a shallow copy of the same scope/environ per request (middlewares may add
keys), and the same realistic headers and cookies. Before timing, every case is
run once with a recording `send`/`start_response` and checked (status,
Set-Cookie or not, snippet or not, session read): a benchmark of a
misconfigured stack fails instead of printing numbers.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import sys
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field, replace
from typing import Any

import posthog

from common import (
    COOKIE_NAME,
    FLOOR_ID,
    JSON_BODY,
    OTHER_COOKIES,
    POSTHOG_JS_COOKIE,
    SECRET,
    USER_ID,
    html_page,
    identity_cookie,
    offline_client,
    posthog_peer,
    settings,
)
from measure import Plan, Runner, Series, calibrate, now_ns, timed_round
from posthog_identity import asgi as identity_asgi
from posthog_identity import wsgi as identity_wsgi
from posthog_identity.html import MARKER

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]

HTML_SIZE = 20 * 1024
HTML_BODY = html_page(HTML_SIZE)
USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
SESSION_DATA = {"user_id": 42, "csrf": "Zp4QeV0nT3sYkq9Xb1LmA7cR2wD8fGhJ"}


class BenchError(Exception):
    """A case does not behave as the benchmark assumes: its numbers would mean nothing."""


@dataclass
class Reply:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Expect:
    """What one request of a case must look like."""

    set_cookie: bool = False
    snippet: bool = False
    body: bytes | None = None
    header: tuple[str, str] | None = None

    def check(self, label: str, reply: Reply) -> None:
        problems = []
        if reply.status != 200:
            problems.append(f"status {reply.status}")
        ours = [v for v in reply.values("set-cookie") if v.startswith(COOKIE_NAME + "=")]
        if bool(ours) != self.set_cookie:
            problems.append(f"Set-Cookie {ours!r}, expected {'one' if self.set_cookie else 'none'}")
        if (MARKER in reply.body) != self.snippet:
            problems.append("snippet " + ("missing" if self.snippet else "injected"))
        if self.snippet:
            length = reply.values("content-length")
            if length and int(length[0]) != len(reply.body):
                problems.append(f"Content-Length {length[0]} for {len(reply.body)} bytes")
        if self.body is not None and reply.body != self.body:
            problems.append("body changed")
        if self.header is not None and reply.values(self.header[0]) != [self.header[1]]:
            problems.append(f"{self.header[0]}: {reply.values(self.header[0])!r}")
        if problems:
            raise BenchError(f"{label}: " + "; ".join(problems))


@dataclass
class Case:
    """One measured configuration; `baseline` names the case its overhead is taken against."""

    key: str
    label: str
    run: Runner
    verify: Callable[[], None]
    baseline: str | None = None
    role: str = "ours"  # baseline | ours | peer | reference
    note: str = ""


@dataclass
class Measured:
    case: Case
    per_op: int  # operations per round
    ns: Series = field(default_factory=Series)  # wall clock per request
    cpu: Series = field(default_factory=Series)  # this thread's CPU time per request
    garbage: Series = field(default_factory=Series)


def measure(cases: list[Case], plan: Plan, log: Callable[[str], None]) -> dict[str, Measured]:
    """Verify, warm up and calibrate every case, then time them in interleaved rounds.

    Each round times every case once, starting from a different case each round,
    so slow phases of a noisy machine are shared by all cases, and a case and its
    baseline are never far apart in time.
    """
    results: dict[str, Measured] = {}
    for case in cases:
        case.verify()
        n = calibrate(case.run, plan.round_seconds, plan.warmup_seconds)
        results[case.key] = Measured(case, n)
        log(f"  calibrated {case.key}: {n} requests per round")
    for round_index in range(plan.rounds):
        start = round_index % len(cases)
        for case in cases[start:] + cases[:start]:
            measured = results[case.key]
            ns, cpu, garbage = timed_round(case.run, measured.per_op, plan.disable_gc)
            measured.ns.samples.append(ns)
            measured.cpu.samples.append(cpu)
            measured.garbage.samples.append(garbage)
    return results


# --------------------------------------------------------------------------- ASGI


def _asgi_json_headers() -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(JSON_BODY)).encode()),
    ]


def _asgi_html_headers() -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(HTML_BODY)).encode()),
    ]


def asgi_app(
    body: bytes, headers: Callable[[], list[tuple[bytes, bytes]]], capture: Any = None
) -> Any:
    """A bare ASGI endpoint: the least an app can do to answer (and, given a
    client, capture one event first, as a view does)."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if capture is not None:
            capture.capture("Order Viewed", properties={"order": 7})
        await send({"type": "http.response.start", "status": 200, "headers": headers()})
        await send({"type": "http.response.body", "body": body})

    return app


#: posthog-js's own anonymous id (a UUIDv7), as it sends it on a traced API call.
BROWSER_ID = "0190a5b2-7c1e-7a1b-9c2d-3e4f5a6b7c99"


def browser_id_scope(cookie: str) -> Scope:
    """A single-page app's API call: no cookie of ours, posthog-js's id in its header."""
    scope = asgi_scope(cookie)
    scope["headers"] = [*scope["headers"], (b"x-posthog-distinct-id", BROWSER_ID.encode())]
    return scope


def asgi_scope(cookie: str) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"example.com"),
            (b"user-agent", USER_AGENT.encode()),
            (b"accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
            (b"accept-language", b"en-US,en;q=0.9"),
            (b"accept-encoding", b"gzip, deflate, br"),
            (b"cookie", cookie.encode()),
        ],
        "client": ("203.0.113.7", 51234),
        "server": ("10.0.0.2", 8000),
        "state": {},
    }


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _drop(message: Message) -> None:
    return None


def asgi_runner(loop: asyncio.AbstractEventLoop, app: Any, scope: Scope) -> Runner:
    async def drive(n: int) -> int:
        receive, send = _receive, _drop
        start = now_ns()
        for _ in range(n):
            await app(dict(scope), receive, send)
        return now_ns() - start

    return lambda n: loop.run_until_complete(drive(n))


def asgi_call(loop: asyncio.AbstractEventLoop, app: Any, scope: Scope) -> Reply:
    reply = Reply()

    async def record(message: Message) -> None:
        if message["type"] == "http.response.start":
            reply.status = message["status"]
            reply.headers = [(k.decode(), v.decode()) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            reply.body += message.get("body", b"")

    loop.run_until_complete(app(dict(scope), _receive, record))
    return reply


def starlette_session_cookie() -> str:
    from itsdangerous import TimestampSigner

    data = base64.b64encode(json.dumps(SESSION_DATA).encode())
    return TimestampSigner(SECRET).sign(data).decode()


def asgi_floor(app: Any) -> Any:
    """The least a middleware can do to give captures a distinct id with posthog's public API."""

    async def floor(scope: Scope, receive: Any, send: Any) -> None:
        with posthog.new_context(fresh=True, capture_exceptions=False):
            posthog.identify_context(FLOOR_ID)
            await app(scope, receive, send)

    return floor


def wsgi_floor(app: Any) -> Any:
    """`asgi_floor` for WSGI (the body is a list: the context may end with the call)."""

    def floor(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        with posthog.new_context(fresh=True, capture_exceptions=False):
            posthog.identify_context(FLOOR_ID)
            return app(environ, start_response)  # type: ignore[no-any-return]

    return floor


def asgi_cases(loop: asyncio.AbstractEventLoop) -> list[Case]:
    from starlette.middleware.sessions import SessionMiddleware

    from posthog_identity.testing import EXAMPLE_FLAG_DEFINITIONS

    client = offline_client()
    session = starlette_session_cookie()
    returning = f"{OTHER_COOKIES}; {COOKIE_NAME}={identity_cookie()}; session={session}"
    signed_in = (
        f"{OTHER_COOKIES}; {COOKIE_NAME}={identity_cookie(signed_in=True)}; session={session}"
    )
    first_visit = f"{OTHER_COOKIES}; session={session}"
    in_session = f"{returning}; {POSTHOG_JS_COOKIE}"
    scope = asgi_scope(returning)

    bare_json = asgi_app(JSON_BODY, _asgi_json_headers)
    bare_html = asgi_app(HTML_BODY, _asgi_html_headers)
    bare_capture = asgi_app(JSON_BODY, _asgi_json_headers, capture=client)
    adopting = browser_id_scope(first_visit)

    def ours(app: Any, **options: Any) -> Any:
        return identity_asgi.IdentityMiddleware(app, settings(), client=client, **options)

    ours_json = ours(bare_json)
    ours_html = ours(bare_html)
    # Flags bootstrapped from definitions already in memory (local evaluation).
    flag_client = offline_client()
    flag_client.feature_flags = EXAMPLE_FLAG_DEFINITIONS
    flag_settings = replace(settings(), bootstrap_flags=True, personal_api_key="phx_bench")
    ours_html_flags = identity_asgi.IdentityMiddleware(bare_html, flag_settings, client=flag_client)

    def flags_were_bootstrapped() -> None:
        reply = asgi_call(loop, ours_html_flags, scope)
        if b"checkout-experiment" not in reply.body:
            raise BenchError("the flags case injected no flag bootstrap")

    ours_signed_in = ours(bare_json, user_id=lambda scope: USER_ID)
    starlette_sessions = SessionMiddleware(bare_json, secret_key=SECRET)
    posthog_context = posthog_peer(bare_json, client)
    posthog_capturing = posthog_peer(bare_capture, client)

    # The session cookie must really be read, or SessionMiddleware's cost is a miss.
    seen: dict[str, Any] = {}

    async def probe(scope: Scope, receive: Any, send: Any) -> None:
        seen.update(scope.get("session", {}))
        await bare_json(scope, receive, send)

    def case(
        key: str,
        label: str,
        app: Any,
        expect: Expect,
        *,
        cookie_scope: Scope = scope,
        baseline: str | None = "asgi.bare_json",
        role: str = "ours",
        note: str = "",
        extra: Callable[[], None] | None = None,
    ) -> Case:
        def verify() -> None:
            expect.check(label, asgi_call(loop, app, cookie_scope))
            if extra is not None:
                extra()

        return Case(
            f"asgi.{key}",
            label,
            asgi_runner(loop, app, cookie_scope),
            verify,
            baseline if role != "baseline" else None,
            role,
            note,
        )

    def session_was_read() -> None:
        asgi_call(loop, SessionMiddleware(probe, secret_key=SECRET), scope)
        if seen != SESSION_DATA:
            raise BenchError(f"SessionMiddleware did not load the session: {seen!r}")

    return [
        case("bare_json", "bare app, JSON", bare_json, Expect(body=JSON_BODY), role="baseline"),
        case(
            "ours_returning",
            "ours, returning visitor, JSON",
            ours_json,
            Expect(body=JSON_BODY),
            note="valid cookie, nobody reported: no Set-Cookie",
        ),
        case(
            "ours_signed_in",
            "ours, returning signed-in user, JSON",
            ours_signed_in,
            Expect(body=JSON_BODY),
            cookie_scope=asgi_scope(signed_in),
            note="user_id callback; the cookie's user hash is checked",
        ),
        case(
            "ours_in_session",
            "ours, returning visitor with posthog-js's session cookie, JSON",
            ours_json,
            Expect(body=JSON_BODY),
            cookie_scope=asgi_scope(in_session),
            note="the session id read from posthog-js's cookie for server events",
        ),
        case(
            "ours_first_visit",
            "ours, first visit, JSON",
            ours_json,
            Expect(set_cookie=True, body=JSON_BODY),
            cookie_scope=asgi_scope(first_visit),
            note="mints an id, signs and sets the cookie",
        ),
        case(
            "ours_adopt",
            "ours, API call adopting posthog-js's id, JSON",
            ours_json,
            Expect(set_cookie=True, body=JSON_BODY),
            cookie_scope=adopting,
            note="no cookie of ours; X-POSTHOG-DISTINCT-ID from posthog-js",
        ),
        case(
            "bare_capture",
            "bare app capturing one event, JSON",
            bare_capture,
            Expect(body=JSON_BODY),
            role="baseline",
        ),
        case(
            "ours_capture",
            "ours, returning visitor, one event captured",
            ours(bare_capture),
            Expect(body=JSON_BODY),
            baseline="asgi.bare_capture",
            note="the event gets the request's distinct id and properties",
        ),
        case(
            "posthog_capture",
            "posthog PosthogASGIMiddleware, one event captured",
            posthog_capturing,
            Expect(body=JSON_BODY),
            baseline="asgi.bare_capture",
            role="peer",
        ),
        case("bare_html", "bare app, 20 KB HTML", bare_html, Expect(), role="baseline"),
        case(
            "ours_html",
            "ours, returning visitor, 20 KB HTML",
            ours_html,
            Expect(snippet=True),
            baseline="asgi.bare_html",
            note="snippet rendered and injected, Content-Length fixed",
        ),
        case(
            "ours_html_flags",
            "ours, 20 KB HTML, 2 flags bootstrapped (local evaluation)",
            ours_html_flags,
            Expect(snippet=True),
            baseline="asgi.bare_html",
            note="the added cost of flags is this row minus the one above",
            extra=flags_were_bootstrapped,
        ),
        case(
            "starlette_session",
            "Starlette SessionMiddleware, valid cookie",
            starlette_sessions,
            Expect(body=JSON_BODY),
            role="peer",
            extra=session_was_read,
        ),
        case(
            "posthog_asgi",
            "posthog PosthogASGIMiddleware",
            posthog_context,
            Expect(body=JSON_BODY),
            role="peer",
        ),
        case(
            "posthog_floor",
            "floor: posthog's public context alone",
            asgi_floor(bare_json),
            Expect(body=JSON_BODY),
            role="reference",
            note="new_context + identify_context: what any request-scoped identity costs",
        ),
    ]


# --------------------------------------------------------------------------- WSGI


def wsgi_app(body: bytes, content_type: str, capture: Any = None) -> Any:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if capture is not None:
            capture.capture("Order Viewed", properties={"order": 7})
        start_response("200 OK", list(headers))
        return [body]

    return app


def wsgi_environ(cookie: str | None) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "example.com",
        "SERVER_PORT": "443",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "203.0.113.7",
        "HTTP_HOST": "example.com",
        "HTTP_USER_AGENT": USER_AGENT,
        "HTTP_ACCEPT": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        "HTTP_ACCEPT_LANGUAGE": "en-US,en;q=0.9",
        "HTTP_ACCEPT_ENCODING": "gzip, deflate, br",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if cookie is not None:
        environ["HTTP_COOKIE"] = cookie
    return environ


def _write(data: bytes) -> None:
    return None


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return _write


def wsgi_runner(app: Any, environ: dict[str, Any]) -> Runner:
    def run(n: int) -> int:
        start_response = _start_response
        start = now_ns()
        for _ in range(n):
            result = app(environ.copy(), start_response)
            try:
                for _chunk in result:
                    pass
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        return now_ns() - start

    return run


def wsgi_call(app: Any, environ: dict[str, Any]) -> Reply:
    reply = Reply()

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        reply.status = int(status.split()[0])
        reply.headers = list(headers)
        return _write

    result = app(environ.copy(), start_response)
    try:
        reply.body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return reply


def flask_app() -> Any:
    """One Flask view that reads the session; with no session cookie it reads an empty one."""
    from flask import Flask, Response, session

    app = Flask("bench")
    app.secret_key = SECRET

    @app.get("/")
    def index() -> Response:
        user = session.get("user_id")
        return Response(JSON_BODY, mimetype="application/json", headers={"X-User": str(user)})

    return app


def flask_session_cookie(app: Any) -> str:
    serializer = app.session_interface.get_signing_serializer(app)
    return str(serializer.dumps(SESSION_DATA))


def wsgi_cases() -> list[Case]:
    from werkzeug.middleware.proxy_fix import ProxyFix

    client = offline_client()
    flask = flask_app()
    session = flask_session_cookie(flask)
    identity = f"{COOKIE_NAME}={identity_cookie()}"
    returning = f"{OTHER_COOKIES}; {identity}; session={session}"
    signed_in = (
        f"{OTHER_COOKIES}; {COOKIE_NAME}={identity_cookie(signed_in=True)}; session={session}"
    )
    first_visit = f"{OTHER_COOKIES}; session={session}"
    without_session = f"{OTHER_COOKIES}; {identity}"
    in_session = f"{returning}; {POSTHOG_JS_COOKIE}"
    environ = wsgi_environ(returning)
    proxied = {
        **environ,
        "HTTP_X_FORWARDED_FOR": "198.51.100.20",
        "HTTP_X_FORWARDED_PROTO": "https",
    }

    bare_json = wsgi_app(JSON_BODY, "application/json")
    bare_html = wsgi_app(HTML_BODY, "text/html; charset=utf-8")
    bare_capture = wsgi_app(JSON_BODY, "application/json", capture=client)
    adopting = {**wsgi_environ(first_visit), "HTTP_X_POSTHOG_DISTINCT_ID": BROWSER_ID}

    def ours(app: Any, **options: Any) -> Any:
        return identity_wsgi.IdentityMiddleware(app, settings(), client=client, **options)

    def case(
        key: str,
        label: str,
        app: Any,
        expect: Expect,
        *,
        env: dict[str, Any] = environ,
        baseline: str | None = "wsgi.bare_json",
        role: str = "ours",
        note: str = "",
    ) -> Case:
        return Case(
            f"wsgi.{key}",
            label,
            wsgi_runner(app, env),
            lambda: expect.check(label, wsgi_call(app, env)),
            baseline if role != "baseline" else None,
            role,
            note,
        )

    return [
        case("bare_json", "bare app, JSON", bare_json, Expect(body=JSON_BODY), role="baseline"),
        case(
            "ours_returning",
            "ours, returning visitor, JSON",
            ours(bare_json),
            Expect(body=JSON_BODY),
            note="valid cookie, nobody reported: no Set-Cookie",
        ),
        case(
            "ours_signed_in",
            "ours, returning signed-in user, JSON",
            ours(bare_json, user_id=lambda environ: USER_ID),
            Expect(body=JSON_BODY),
            env=wsgi_environ(signed_in),
            note="user_id callback; the cookie's user hash is checked",
        ),
        case(
            "ours_in_session",
            "ours, returning visitor with posthog-js's session cookie, JSON",
            ours(bare_json),
            Expect(body=JSON_BODY),
            env=wsgi_environ(in_session),
            note="the session id read from posthog-js's cookie for server events",
        ),
        case(
            "ours_first_visit",
            "ours, first visit, JSON",
            ours(bare_json),
            Expect(set_cookie=True, body=JSON_BODY),
            env=wsgi_environ(first_visit),
            note="mints an id, signs and sets the cookie",
        ),
        case(
            "ours_adopt",
            "ours, API call adopting posthog-js's id, JSON",
            ours(bare_json),
            Expect(set_cookie=True, body=JSON_BODY),
            env=adopting,
            note="no cookie of ours; X-POSTHOG-DISTINCT-ID from posthog-js",
        ),
        case(
            "bare_capture",
            "bare app capturing one event, JSON",
            bare_capture,
            Expect(body=JSON_BODY),
            role="baseline",
        ),
        case(
            "ours_capture",
            "ours, returning visitor, one event captured",
            ours(bare_capture),
            Expect(body=JSON_BODY),
            baseline="wsgi.bare_capture",
            note="the event gets the request's distinct id and properties",
        ),
        case("bare_html", "bare app, 20 KB HTML", bare_html, Expect(), role="baseline"),
        case(
            "ours_html",
            "ours, returning visitor, 20 KB HTML",
            ours(bare_html),
            Expect(snippet=True),
            baseline="wsgi.bare_html",
            note="snippet rendered and injected, Content-Length fixed",
        ),
        case(
            "posthog_floor",
            "floor: posthog's public context alone",
            wsgi_floor(bare_json),
            Expect(body=JSON_BODY),
            role="reference",
            note="new_context + identify_context: what any request-scoped identity costs",
        ),
        case(
            "proxy_fix",
            "Werkzeug ProxyFix (X-Forwarded-For/Proto)",
            ProxyFix(bare_json, x_for=1, x_proto=1),
            Expect(body=JSON_BODY),
            env=proxied,
            role="reference",
            note="a cheap, ubiquitous WSGI middleware; it parses no cookie",
        ),
        case(
            "flask",
            "Flask app, no session cookie",
            flask,
            Expect(body=JSON_BODY, header=("X-User", "None")),
            env=wsgi_environ(without_session),
            role="baseline",
        ),
        case(
            "flask_session",
            "Flask app, valid session cookie read",
            flask,
            Expect(body=JSON_BODY, header=("X-User", "42")),
            baseline="wsgi.flask",
            role="peer",
            note="the same app and view; only the signed session cookie differs",
        ),
        case(
            "flask_ours",
            "ours around the Flask app, returning visitor",
            ours(flask),
            Expect(body=JSON_BODY, header=("X-User", "None")),
            env=wsgi_environ(without_session),
            baseline="wsgi.flask",
            note="our overhead on a real framework's stack",
        ),
    ]
