"""ASGI adapter behaviour beyond the shared lifecycle table: scopes, lifespan, Starlette;
how its injection holds and passes on response messages."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import posthog
import pytest
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from posthog_identity import current_identity, identify_user
from posthog_identity.asgi import IdentityMiddleware
from posthog_identity.signing import CookieCodec, CookieState
from tests.helpers.drivers import Driver, call_asgi
from tests.helpers.pages import PAGE
from tests.helpers.project import API_KEY, SECRET
from tests.helpers.wire import COOKIE, read_cookie

if TYPE_CHECKING:
    from posthog_identity.settings import Settings
    from posthog_identity.testing import Sink


#: posthog-js's own anonymous id (a UUIDv7), as it sends it on a traced API call.
_BROWSER_ID = "0193a6b2-7c1e-7a1b-9c2d-3e4f5a6b7c8d"


async def plain(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]})
    await send({"type": "http.response.body", "body": b"ok"})


def drive(app: Any) -> Driver:
    return Driver(lambda method, url, headers: call_asgi(app, method, url, headers))


def test_the_apps_headers_and_body_messages_are_kept(settings: Settings) -> None:
    reply = drive(IdentityMiddleware(plain, settings)).get("/")
    assert reply.header("x-app") == "1"
    assert reply.body == b"ok"
    assert len(reply.identity_cookies) == 1


def test_unknown_scope_types_pass_through(settings: Settings) -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    asyncio.run(IdentityMiddleware(app, settings)({"type": "custom"}, None, None))  # type: ignore[arg-type]
    assert seen == ["custom"]


def test_disabled_passes_the_original_send_through(settings: Settings) -> None:
    received: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        received.append(send)

    async def send(message: Any) -> None:
        pass

    wrapped = IdentityMiddleware(app, replace(settings, disabled=True))
    asyncio.run(wrapped({"type": "http", "path": "/"}, None, send))  # type: ignore[arg-type]
    assert received == [send]


def _response_headers(
    settings: Settings, exclude: str, path: str, root_path: str
) -> list[tuple[bytes, bytes]]:
    wrapped = IdentityMiddleware(plain, replace(settings, exclude_paths=(exclude,)))
    scope = {"type": "http", "method": "GET", "path": path, "root_path": root_path, "headers": []}
    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    asyncio.run(wrapped(scope, None, send))  # type: ignore[arg-type]
    headers: list[tuple[bytes, bytes]] = messages[0]["headers"]
    return headers


def test_excluded_paths_are_matched_below_the_mount_point(settings: Settings) -> None:
    headers = _response_headers(settings, "/static", "/app/static/x.css", root_path="/app")
    assert headers == [(b"x-app", b"1")]


def test_the_mount_point_is_stripped_only_at_a_segment_boundary(settings: Settings) -> None:
    # Mounted at /app, "/apple/x" is not below the mount point: it stays whole.
    headers = _response_headers(settings, "/apple", "/apple/x", root_path="/app")
    assert headers == [(b"x-app", b"1")], "excluded as /apple, not read as 'le/x'"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_user_id_may_be_sync_or_async(
    settings: Settings, client: posthog.Client, sink: Sink, kind: str
) -> None:
    users: list[str] = []

    def sync_user(scope: dict[str, Any]) -> object:
        return users[0] if users else None

    async def async_user(scope: dict[str, Any]) -> object:
        await asyncio.sleep(0)
        return users[0] if users else None

    user_id = sync_user if kind == "sync" else async_user
    driver = drive(IdentityMiddleware(plain, settings, user_id=user_id, client=client))
    driver.get("/")
    anonymous = driver.state.anonymous_id
    users.append("frank")
    driver.get("/")
    (alias,) = sink.wait_for(event="$create_alias", count=1)
    assert (alias["distinct_id"], alias["properties"]["alias"]) == ("frank", anonymous)


def test_an_async_callback_that_raises_reports_nothing(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="posthog_identity")

    async def broken(scope: dict[str, Any]) -> object:
        raise TimeoutError("auth backend slow")

    driver = drive(IdentityMiddleware(plain, settings, user_id=broken))
    assert driver.get("/").status == 200
    assert driver.state.user_hash is None
    assert any("TimeoutError" in r.getMessage() for r in caplog.records)


def run_lifespan(app: Any, during: Any) -> list[str]:
    """Run startup, `during()`, then shutdown, as a server would; return what the app sent."""
    sent: list[str] = []

    async def main() -> None:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        started = asyncio.Event()

        async def send(message: dict[str, Any]) -> None:
            sent.append(message["type"])
            started.set()

        task = asyncio.create_task(
            app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send)
        )
        await inbox.put({"type": "lifespan.startup"})
        await started.wait()
        await asyncio.to_thread(during)
        await inbox.put({"type": "lifespan.shutdown"})
        await task

    asyncio.run(main())
    return sent


def test_websocket_reads_identity_from_the_cookie_and_sets_nothing(settings: Settings) -> None:
    seen: list[Any] = []

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        seen.append(current_identity())
        await websocket.close()

    app = IdentityMiddleware(Starlette(routes=[WebSocketRoute("/ws", endpoint)]), settings)
    cookie = drive(IdentityMiddleware(plain, settings)).get("/").identity_cookies[0]
    messages: list[dict[str, Any]] = []
    inbox = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "websocket",
        "path": "/ws",
        "root_path": "",
        "scheme": "ws",
        "query_string": b"",
        "headers": [(b"cookie", f"ph_identity={cookie}".encode())],
    }
    asyncio.run(app(scope, receive, send))
    assert seen[0].anonymous_id == read_cookie(cookie).anonymous_id
    accept = next(m for m in messages if m["type"] == "websocket.accept")
    assert not any(k == b"set-cookie" for k, _ in accept.get("headers", []))


def test_lifespan_passes_through_and_flushes_events_before_shutdown_completes(
    settings: Settings, sink: Sink
) -> None:
    # A client that would hold events for a minute: only the shutdown flush sends them.
    slow = posthog.Client(API_KEY, host=sink.url, flush_interval=60, flush_at=1000)
    app = IdentityMiddleware(
        Starlette(routes=[Route("/", _capture_endpoint(slow))]), settings, client=slow
    )
    seen_before_shutdown: list[int] = []

    def during() -> None:
        assert call_asgi(app, "GET", "/", {}).status == 200
        seen_before_shutdown.append(len(sink.events()))

    sent = run_lifespan(app, during)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert seen_before_shutdown == [0]
    assert [e["event"] for e in sink.events()] == ["Lifespan Test"]
    slow.shutdown()


def _capture_endpoint(client: posthog.Client) -> Any:
    async def endpoint(request: Request) -> PlainTextResponse:
        client.capture("Lifespan Test")
        return PlainTextResponse("ok")

    return endpoint


class HeaderAuth(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        name = conn.headers.get("x-user")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


def starlette_app(client: posthog.Client) -> Starlette:
    async def home(request: Request) -> JSONResponse:
        client.capture("Home Viewed")
        return JSONResponse({"user": request.user.display_name})

    def login(request: Request) -> PlainTextResponse:
        # A sync endpoint: Starlette runs it in a thread pool.
        identify_user(request.query_params["user"])
        client.capture("Logged In")
        return PlainTextResponse("welcome")

    return Starlette(
        routes=[Route("/", home), Route("/login", login)],
        middleware=[Middleware(AuthenticationMiddleware, backend=HeaderAuth())],
    )


def test_starlette_auth_inside_the_middleware_is_seen_when_the_response_starts(
    settings: Settings, client: posthog.Client, sink: Sink
) -> None:
    wrapped = IdentityMiddleware(starlette_app(client), settings, client=client)
    driver = drive(wrapped)
    driver.get("/")
    anonymous = driver.state.anonymous_id
    driver.get("/", user="grace")
    (alias,) = sink.wait_for(event="$create_alias", count=1)
    assert (alias["distinct_id"], alias["properties"]["alias"]) == ("grace", anonymous)
    assert driver.state.linked


def test_starlette_auth_outside_the_middleware_is_seen_from_the_start(
    settings: Settings, client: posthog.Client, sink: Sink
) -> None:
    inner = starlette_app(client)
    wrapped = AuthenticationMiddleware(
        IdentityMiddleware(inner, settings, client=client), backend=HeaderAuth()
    )
    driver = drive(wrapped)
    driver.get("/")
    driver.get("/", user="heidi")
    _, second = sink.wait_for(event="Home Viewed", count=2)
    assert second["distinct_id"] == "heidi"
    assert "$process_person_profile" not in second["properties"]


def test_identify_user_from_a_sync_endpoint_in_a_thread_pool(
    settings: Settings, client: posthog.Client, sink: Sink
) -> None:
    driver = drive(IdentityMiddleware(starlette_app(client), settings, client=client))
    driver.get("/")
    anonymous = driver.state.anonymous_id
    reply = driver.get("/login?user=ivan")
    assert reply.body == b"welcome"
    (alias,) = sink.wait_for(event="$create_alias", count=1)
    assert (alias["distinct_id"], alias["properties"]["alias"]) == ("ivan", anonymous)
    (logged_in,) = sink.wait_for(event="Logged In", count=1)
    assert logged_in["distinct_id"] == "ivan"


class NoIdentityUser:
    is_authenticated = True
    display_name = "lee"

    @property
    def identity(self) -> str:
        raise NotImplementedError


class NoIdentityAuth(AuthenticationBackend):
    """Signs in a `NoIdentityUser` when the request names a user (`X-User`)."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, Any] | None:
        if not conn.headers.get("x-user"):
            return None
        return AuthCredentials(["authenticated"]), NoIdentityUser()


def test_a_starlette_user_without_identity_is_known_by_its_display_name(
    settings: Settings, client: posthog.Client, sink: Sink
) -> None:
    wrapped = IdentityMiddleware(
        AuthenticationMiddleware(plain, backend=NoIdentityAuth()), settings, client=client
    )
    driver = drive(wrapped)
    driver.get("/", user="lee")
    assert driver.state.user_hash is not None
    assert driver.state.user_hash == wrapped.engine.codec.user_hash("lee")
    driver.get("/")
    assert driver.state.user_hash is None, "an unauthenticated user is nobody: logout"


def test_reporting_nothing_at_response_start_keeps_a_user_reported_earlier(
    settings: Settings, client: posthog.Client, sink: Sink
) -> None:
    from posthog_identity.context import report_user

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        report_user("olga")  # an integration saw the user; scope["user"] never set
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    driver = drive(IdentityMiddleware(plain, settings, client=client))
    driver.get("/")
    anonymous = driver.state.anonymous_id
    driver = Driver(
        lambda method, url, headers: call_asgi(
            IdentityMiddleware(app, settings, client=client), method, url, headers
        ),
        cookie=driver.cookie,
    )
    driver.get("/")
    (alias,) = sink.wait_for(event="$create_alias", count=1)
    assert (alias["distinct_id"], alias["properties"]["alias"]) == ("olga", anonymous)


# -- the snippet's injection: messages held and passed on ---------------------------


def record(
    app: Any, messages: list[dict[str, Any]], headers: list[tuple[bytes, bytes]] | None = None
) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "root_path": "",
        "headers": headers or [],
        "scheme": "http",
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        for message in messages:
            await send(message)

    asyncio.run(app(inner)(scope, receive, send))
    return sent


def start(*extra: tuple[bytes, bytes]) -> dict[str, Any]:
    return {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/html"), *extra],
    }


def body(data: bytes, more: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


def test_asgi_holds_the_start_only_until_the_insertion_point(settings: Settings) -> None:
    sent = record(
        lambda inner: IdentityMiddleware(inner, settings),
        [start(), body(b"<html><he"), body(b"ad></head>"), body(b"<body>"), body(b"", more=False)],
    )
    kinds = [m["type"] for m in sent]
    bodies = [m["body"] for m in sent[1:]]
    # Once the snippet is placed, the held chunks go out as they came, the
    # snippet inside the one that holds the insertion point.
    assert kinds == ["http.response.start"] + ["http.response.body"] * 4
    assert bodies[0] == b"<html><he"
    assert bodies[1].startswith(b"ad><script data-posthog-identity")
    assert bodies[1].endswith(b"</script></head>")
    assert bodies[2:] == [b"<body>", b""]
    assert [m.get("more_body", False) for m in sent[1:]] == [True, True, True, False]


def test_asgi_gives_up_on_a_file_sent_by_path(settings: Settings) -> None:
    pathsend = {"type": "http.response.pathsend", "path": "/tmp/page.html"}
    sent = record(
        lambda inner: IdentityMiddleware(inner, settings), [start(), body(b"<html>"), pathsend]
    )
    assert [m["type"] for m in sent] == [
        "http.response.start",
        "http.response.body",
        "http.response.pathsend",
    ]
    assert sent[1]["body"] == b"<html>"


def test_asgi_content_length_is_corrected(settings: Settings) -> None:
    sent = record(
        lambda inner: IdentityMiddleware(inner, settings),
        [start((b"content-length", str(len(PAGE)).encode())), body(PAGE, more=False)],
    )
    length = dict(sent[0]["headers"])[b"content-length"]
    assert int(length) == sum(len(m["body"]) for m in sent[1:])


def returning_visitor() -> list[tuple[bytes, bytes]]:
    """Request headers of a returning visitor: a fresh identity cookie, nothing to write."""
    state = CookieState(str(uuid.uuid4()), issued_at=int(time.time()))
    return [(b"cookie", f"{COOKIE}={CookieCodec((SECRET,)).dumps(state)}".encode())]


@pytest.mark.parametrize(
    ("headers", "injected"),
    [
        ([(b"Content-Type", b"text/html; charset=utf-8")], True),
        ([(b"content-type", b"application/json"), (b"CONTENT-TYPE", b"text/html")], True),
        ([(b"content-type", b"text/html"), (b"content-type", b"application/json")], False),
        ([(b"content-type", b"application/json")], False),
        ([(b"x-app", b"1")], False),
    ],
    ids=["name-in-any-case", "the-last-one-counts", "not-the-first", "json", "none"],
)
def test_a_returning_visitors_content_type_decides_the_snippet_whatever_its_spelling(
    settings: Settings, headers: list[tuple[bytes, bytes]], injected: bool
) -> None:
    app_start = {"type": "http.response.start", "status": 200, "headers": headers}
    sent = record(
        lambda inner: IdentityMiddleware(inner, settings),
        [app_start, body(PAGE, more=False)],
        returning_visitor(),
    )
    assert (b"data-posthog-identity" in b"".join(m["body"] for m in sent[1:])) is injected
    if not injected:
        assert sent[0] is app_start, "a response with nothing to add goes out as the app sent it"


@pytest.mark.parametrize(
    ("sent", "inside"),
    [
        ([(b"x-posthog-distinct-id", _BROWSER_ID.encode())], "browser"),
        ([(b"X-PostHog-Distinct-Id", _BROWSER_ID.encode())], "browser"),
        ([(b"x-posthog-distinct-id", b"someone-else")], "minted"),
        (
            [
                (b"x-posthog-distinct-id", _BROWSER_ID.encode()),
                (b"x-posthog-distinct-id", b"someone-else"),
            ],
            "browser",
        ),
    ],
    ids=["adopted", "adopted-any-case", "forged", "repeated"],
)
def test_an_app_inside_sees_one_distinct_id_header_with_the_verified_id(
    settings: Settings, sent: list[tuple[bytes, bytes]], inside: str
) -> None:
    seen: list[tuple[list[bytes], str]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        values = [v for k, v in scope["headers"] if k.lower() == b"x-posthog-distinct-id"]
        identity = current_identity()
        assert identity is not None
        seen.append((values, identity.distinct_id))
        await plain(scope, receive, send)

    record(lambda inner: IdentityMiddleware(app, settings), [], sent)

    [(values, distinct_id)] = seen
    assert values == [distinct_id.encode()]
    if inside == "browser":
        assert distinct_id == _BROWSER_ID
    else:
        assert distinct_id not in (_BROWSER_ID, "someone-else")


def test_a_cors_preflight_passes_through_marked_bypassed(settings: Settings) -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append({"bypassed": scope.get("posthog_identity.bypassed"), "who": current_identity()})
        await plain(scope, receive, send)

    reply = drive(IdentityMiddleware(app, settings)).get(
        "/api", method="OPTIONS", headers={"Access-Control-Request-Method": "POST"}
    )
    assert reply.headers_named("Set-Cookie") == []
    assert seen == [{"bypassed": True, "who": None}]


def test_request_info_reads_posthog_js_distinct_id_whatever_the_headers_case() -> None:
    from posthog_identity.asgi_scope import header, request_info

    browser = "0193a6b2-7c1e-7a1b-9c2d-3e4f5a6b7c8d"
    scope = {"type": "http", "headers": [(b"X-PostHog-Distinct-Id", browser.encode())]}
    request, present = request_info(scope, "/")
    assert (request.distinct_header, present) == (browser, True)
    assert header(scope, "x-posthog-distinct-id") == browser
    assert header(scope, "access-control-request-method") is None
    assert request_info({"type": "http", "headers": []}, "/")[0].distinct_header == ""


@pytest.mark.parametrize(
    ("headers", "scope", "expected"),
    [
        pytest.param(
            [(b"cookie", b"a=1"), (b"accept", b"*/*"), (b"cookie", b"b=2")],
            {},
            {"cookie_header": "a=1; b=2"},
            id="cookies-split-over-headers-are-joined-in-order",
        ),
        pytest.param(
            [
                (b"Cookie", b"a=1"),
                (b"Accept", b"*/*"),
                (b"User-Agent", b"UA"),
                (b"X-Forwarded-For", b"1.2.3.4"),
            ],
            {},
            {"cookie_header": "a=1", "user_agent": "UA", "forwarded_for": "1.2.3.4"},
            id="header-names-in-any-case",
        ),
        pytest.param(
            [(b"host", b"first.example"), (b"Host", b"second.example"), (b"dnt", b"1")],
            {},
            {"host": "first.example", "dnt": "1"},
            id="the-first-value-of-a-repeated-header-wins",
        ),
        pytest.param(
            [(b"sec-gpc", b""), (b"sec-gpc", b"1")],
            {},
            {"sec_gpc": ""},
            id="an-empty-first-value-still-wins",
        ),
        pytest.param(
            [],
            {"server": ("10.0.0.2", 443), "scheme": "https"},
            {"host": "10.0.0.2", "scheme": "https"},
            id="no-host-header-default-port",
        ),
        pytest.param(
            [],
            {"server": ("10.0.0.2", 8000)},
            {"host": "10.0.0.2:8000"},
            id="no-host-header-other-port",
        ),
        pytest.param(
            [(b"x-posthog-session-id", b"s"), (b"x-posthog-window-id", b"w")],
            {"client": ("203.0.113.7", 5000), "method": "POST", "path": "/app/x"},
            {
                "session_header": "s",
                "window_header": "w",
                "peer": "203.0.113.7",
                "method": "POST",
                "url_path": "/app/x",
            },
            id="posthog-js-headers-peer-method-and-whole-path",
        ),
        pytest.param(
            [(b"accept", b"*/*")],
            {},
            {},
            id="nothing-the-core-reads",
        ),
    ],
)
def test_request_info_reads_the_headers_the_core_needs(
    headers: list[tuple[bytes, bytes]], scope: dict[str, Any], expected: dict[str, str]
) -> None:
    from posthog_identity.asgi_scope import request_info
    from posthog_identity.exchange import RequestInfo

    request, distinct = request_info({"type": "http", "headers": headers, **scope}, "/x")
    defaults = RequestInfo(method="GET", scheme="http", path="/x")._asdict()
    assert request._asdict() == {**defaults, **expected}
    assert distinct is False
