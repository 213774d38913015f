"""PEP 3333 behaviour of the WSGI adapter, beyond the shared lifecycle table; how its
injection holds start_response, takes write() and yields to an error page."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.validate import validator

import pytest

from posthog_identity import ConfigurationError, Settings, current_identity, identify_user
from posthog_identity.html import MARKER
from posthog_identity.wsgi import IdentityMiddleware
from tests.helpers.drivers import Driver, call_wsgi
from tests.helpers.pages import HTML, PAGE
from tests.helpers.project import SECRET
from tests.helpers.wire import read_cookie

if TYPE_CHECKING:
    import posthog

    from posthog_identity.testing import Sink

TEXT = [("Content-Type", "text/plain")]


def drive(app: Any, settings: Settings, client: Any = None, **options: Any) -> Driver:
    wrapped = IdentityMiddleware(validator(app), settings, client=client, **options)
    return Driver(lambda method, url, headers: call_wsgi(wrapped, method, url, headers))


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", TEXT)
    return [b"hello"]


def test_set_cookie_is_appended_to_the_apps_own_headers(settings: Settings) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [*TEXT, ("Set-Cookie", "session=abc; Path=/")])
        return [b"ok"]

    reply = drive(app, settings).get("/")
    cookies = reply.headers_named("Set-Cookie")
    assert cookies[0] == "session=abc; Path=/"
    assert cookies[1].startswith("ph_identity=")
    assert reply.header("Content-Type") == "text/plain"


def test_exc_info_is_passed_to_the_server(settings: Settings) -> None:
    seen: list[Any] = []
    wrapped = IdentityMiddleware(_failing_then_error_page, settings)

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen.append((status, exc_info))
        return lambda data: None

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
    result = wrapped(environ, start_response)
    assert b"".join(result) == b"error page"
    close = getattr(result, "close", None)  # as PEP 3333 servers do: if it has one
    if close is not None:
        close()
    status, exc_info = seen[-1]
    assert status == "500 Internal Server Error"
    assert exc_info is not None
    assert isinstance(exc_info[1], ZeroDivisionError)


def _failing_then_error_page(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    import sys

    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        start_response("500 Internal Server Error", TEXT, sys.exc_info())
    return [b"error page"]


def test_an_error_page_after_start_response_keeps_the_cookie_and_sends_no_second_link(
    settings: Settings, client: posthog.Client, sink: Sink
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/login":
            identify_user("alice")
        start_response("200 OK", TEXT)
        try:
            raise ValueError("template failed")
        except ValueError:
            import sys

            start_response("500 Internal Server Error", TEXT, sys.exc_info())
        return [b"error"]

    driver = drive(app, settings, client)
    driver.get("/")  # an anonymous cookie first
    reply = driver.get("/login")
    assert reply.status == 500
    assert len(reply.identity_cookies) == 1
    client.flush()
    assert len(sink.wait_for(event="$create_alias", count=1)) == 1


def test_the_write_callable_still_works(settings: Settings) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", TEXT)
        write(b"written ")
        return [b"returned"]

    reply = drive(app, settings).get("/")
    assert reply.body == b"written returned"
    assert len(reply.identity_cookies) == 1


class Tracked:
    """An app iterable that records close() and can fail mid-iteration."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield b"one"
        if self.fail:
            raise RuntimeError("broken stream")
        yield b"two"

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("fail", [False, True], ids=["complete", "raises"])
def test_the_apps_close_is_always_called(settings: Settings, fail: bool) -> None:
    body = Tracked(fail)

    def app(environ: dict[str, Any], start_response: Any) -> Tracked:
        start_response("200 OK", TEXT)
        return body

    wrapped = IdentityMiddleware(app, settings)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
    result = wrapped(environ, lambda status, headers, exc_info=None: None)
    iterator = iter(result)
    try:
        assert next(iterator) == b"one"
        if fail:
            with pytest.raises(RuntimeError, match="broken stream"):
                next(iterator)
        else:
            assert list(iterator) == [b"two"]
    finally:
        result.close()  # type: ignore[attr-defined]
    assert body.closed
    assert current_identity() is None


def test_an_exception_from_the_app_propagates_and_leaves_no_identity(settings: Settings) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise KeyError("boom")

    wrapped = IdentityMiddleware(app, settings)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
    with pytest.raises(KeyError, match="boom"):
        wrapped(environ, lambda status, headers, exc_info=None: None)
    assert current_identity() is None


def test_remote_user_is_the_default_user(
    settings: Settings, client: posthog.Client, sink: Sink
) -> None:
    user: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", TEXT)
        return [b"ok"]

    wrapped = IdentityMiddleware(validator(app), settings, client=client)

    def call(headers: dict[str, str]) -> Any:
        def with_remote_user(environ: dict[str, Any], start_response: Any) -> Any:
            if user:
                environ["REMOTE_USER"] = user[0]
            return wrapped(environ, start_response)

        return call_wsgi(with_remote_user, "GET", "/", headers)

    driver = Driver(lambda method, url, headers: call(headers))
    driver.get("/")
    anonymous = driver.state.anonymous_id
    user.append("carol")
    driver.get("/")
    (alias,) = sink.wait_for(event="$create_alias", count=1)
    assert (alias["distinct_id"], alias["properties"]["alias"]) == ("carol", anonymous)


def test_without_remote_user_the_request_reports_nothing(settings: Settings) -> None:
    driver = drive(hello, settings)
    driver.get("/")
    state = driver.state
    assert driver.get("/").identity_cookies == []
    assert driver.state == state


@pytest.mark.parametrize("path", ["/static", "/static/app.css", "/static/deep/x.js"])
def test_excluded_paths_pass_through_untouched(settings: Settings, path: str) -> None:
    from dataclasses import replace

    excluded = replace(settings, exclude_paths=("/static",))
    reply = drive(hello, excluded).get(path)
    assert reply.headers_named("Set-Cookie") == []


def test_exclusion_matches_whole_segments(settings: Settings) -> None:
    from dataclasses import replace

    excluded = replace(settings, exclude_paths=("/static",))
    assert len(drive(hello, excluded).get("/staticky").identity_cookies) == 1


def test_disabled_is_a_pure_pass_through(settings: Settings) -> None:
    from dataclasses import replace

    sentinel = [b"untouched"]

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", TEXT)
        return sentinel

    wrapped = IdentityMiddleware(app, replace(settings, disabled=True))
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
    seen: list[list[tuple[str, str]]] = []
    result = wrapped(environ, lambda status, headers, exc_info=None: seen.append(headers))
    assert result is sentinel
    assert seen == [TEXT]


def test_a_raising_user_callback_reports_nothing_and_is_logged_once(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="posthog_identity")
    calls: list[int] = []

    def user_id(environ: dict[str, Any]) -> object:
        if calls:
            raise ConnectionError("session store down")
        calls.append(1)
        return "dave"

    driver = drive(hello, settings, user_id=user_id)
    driver.get("/")  # dave, cookie minted for him
    before = driver.state
    for _ in range(3):
        reply = driver.get("/")
        assert reply.status == 200
        assert reply.identity_cookies == [], "a failing callback is never a logout"
    assert driver.state == before
    messages = [r.getMessage() for r in caplog.records if "ConnectionError" in r.getMessage()]
    assert len(messages) == 1


def test_a_user_callback_failing_when_the_response_starts_is_contained(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="posthog_identity")
    calls: list[int] = []

    def user_id(environ: Any) -> object:
        calls.append(1)
        if len(calls) > 1:
            raise LookupError("session expired mid-request")
        return None

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    reply = call_wsgi(IdentityMiddleware(app, settings, user_id=user_id), "GET", "/", {})
    assert reply.status == 200
    assert len(reply.identity_cookies) == 1
    assert "LookupError" in caplog.text


@pytest.mark.parametrize(
    "value", [b"bytes", 1.5, "", object()], ids=["bytes", "float", "empty", "object"]
)
def test_an_invalid_user_id_reports_nothing_and_is_logged_once(
    settings: Settings, caplog: pytest.LogCaptureFixture, value: object
) -> None:
    caplog.set_level(logging.WARNING, logger="posthog_identity")
    driver = drive(hello, settings, user_id=lambda environ: value)
    driver.get("/")
    driver.get("/")
    assert driver.state.user_hash is None
    assert len([r for r in caplog.records if "ignoring a user id" in r.getMessage()]) == 1


@pytest.mark.parametrize("value", [42, "42"], ids=["int", "str"])
def test_int_user_ids_are_strings(
    settings: Settings, client: posthog.Client, sink: Sink, value: object
) -> None:
    reported: list[object] = []
    driver = drive(
        hello, settings, client, user_id=lambda environ: reported[0] if reported else None
    )
    driver.get("/")
    reported.append(value)
    driver.get("/")
    (alias,) = sink.wait_for(event="$create_alias", count=1)
    assert alias["distinct_id"] == "42"


def test_missing_secret_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTHOG_IDENTITY_SECRET", raising=False)
    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_SECRET"):
        IdentityMiddleware(hello)


def test_settings_come_from_the_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTHOG_IDENTITY_SECRET", SECRET)
    monkeypatch.setenv("POSTHOG_IDENTITY_COOKIE_NAME", "from_env")
    monkeypatch.delenv("POSTHOG_API_KEY", raising=False)
    monkeypatch.delenv("POSTHOG_PROJECT_API_KEY", raising=False)
    wrapped = IdentityMiddleware(hello)
    reply = call_wsgi(validator(wrapped), "GET", "/", {})
    assert reply.header(
        "Set-Cookie",
    ).startswith("from_env=")  # type: ignore[union-attr]


def test_without_an_api_key_identity_works_nothing_is_sent_and_one_warning_is_logged(
    caplog: pytest.LogCaptureFixture, sink: Sink
) -> None:
    caplog.set_level(logging.WARNING, logger="posthog_identity")
    settings = Settings(secrets=(SECRET,), host=sink.url)
    driver = drive(hello, settings, user_id=lambda environ: environ.get("HTTP_X_USER"))
    driver.get("/")
    driver.get("/", user="erin")
    assert driver.state.linked
    warnings = [r for r in caplog.records if "no PostHog API key" in r.getMessage()]
    assert len(warnings) == 1
    assert sink.events() == []


def test_a_given_clients_api_key_counts_as_the_api_key(
    settings: Settings, client: posthog.Client
) -> None:
    from dataclasses import replace

    wrapped = IdentityMiddleware(hello, replace(settings, api_key=None), client=client)
    assert wrapped.engine.api_key == client.api_key


def test_identity_cookie_is_readable_by_the_test_helper(settings: Settings) -> None:
    driver = drive(hello, settings)
    driver.get("/")
    assert read_cookie(driver.cookie or "").anonymous_id == driver.state.anonymous_id


def test_a_body_dropped_without_close_leaves_its_context_cleanly(settings: Settings) -> None:
    import gc
    import sys

    raised: list[BaseException | None] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: raised.append(unraisable.exc_value)
    try:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
        wrapped = IdentityMiddleware(hello, settings)
        for _ in range(3):
            result = wrapped(dict(environ), lambda status, headers, exc_info=None: None)
            next(iter(result))
            del result
        gc.collect()
    finally:
        sys.unraisablehook = previous
    assert raised == []
    assert current_identity() is None


class Page:
    """An HTML page in chunks that records how far the server had got when each was read."""

    def __init__(self, chunks: list[bytes], started: list[str]) -> None:
        self.chunks = chunks
        self.started = started
        self.read = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.read += 1
            yield chunk


def _serve_page(settings: Settings, chunks: list[bytes]) -> tuple[list[str], Page, Any]:
    """Call the wrapped app once; return the statuses the server saw, the page, the body."""
    started: list[str] = []
    page = Page(chunks, started)

    def app(environ: dict[str, Any], start_response: Any) -> Page:
        start_response("200 OK", [("Content-Type", "text/html")])
        return page

    def server_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        started.append(status)
        return lambda data: None

    wrapped = IdentityMiddleware(app, settings)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
    return started, page, wrapped(environ, server_start_response)


def test_an_injected_pages_head_reaches_the_server_before_the_call_returns(
    settings: Settings,
) -> None:
    # granian and older hypercorn read status and headers when the application
    # returns: a head still held at that point would be lost.
    started, page, body = _serve_page(settings, [b"<html><he", b"ad></head><body>", b"x</body>"])
    assert started == ["200 OK"]
    assert page.read == 2, "read only as far as the insertion point"
    assert b"data-posthog-identity" in b"".join(body)
    body.close()  # type: ignore[attr-defined]


def test_a_page_longer_than_the_lookahead_still_streams(settings: Settings) -> None:
    lookahead = settings.inject_lookahead
    chunks = [b"<html>" + b"x" * lookahead, *([b"y" * 1024] * 100)]
    started, page, body = _serve_page(settings, chunks)
    assert started == ["200 OK"]
    assert page.read == 1, "the rest of the body is read as the server asks for it"
    assert b"".join(body) == b"".join(chunks)
    body.close()  # type: ignore[attr-defined]


def test_an_error_while_reading_ahead_closes_the_apps_iterable_and_propagates(
    settings: Settings,
) -> None:
    body = Tracked(fail=True)

    def app(environ: dict[str, Any], start_response: Any) -> Tracked:
        start_response("200 OK", [("Content-Type", "text/html")])
        return body

    wrapped = IdentityMiddleware(app, settings)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
    with pytest.raises(RuntimeError, match="broken stream"):
        wrapped(environ, lambda status, headers, exc_info=None: None)
    assert body.closed
    assert current_identity() is None


@pytest.mark.parametrize(
    "chunks",
    [
        [b"<html><head></head><body>x</body></html>"],
        [b"<html><he", b"ad></head>", b"", b"<body>x</body>", b"</html>"],
        [b"<p>no head, no body</p>", b"more"],
        [],
    ],
    ids=["one-chunk", "split-with-chunks-after", "no-insertion-point", "empty"],
)
def test_an_html_page_returned_as_a_list_goes_out_rewritten_with_its_head(
    settings: Settings, chunks: list[bytes]
) -> None:
    page = b"".join(chunks)
    heads: list[list[tuple[str, str]]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", HTML), ("Content-Length", str(len(page)))])
        return chunks

    def server_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        heads.append(headers)
        return lambda data: None

    wrapped = IdentityMiddleware(app, settings)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
    body = wrapped(environ, server_start_response)
    assert len(heads) == 1, "the head reached the server before the call returned"
    # A server sizes a list itself (granian, wsgiref): the head must stay as sent.
    assert not isinstance(body, (list, tuple))
    sent = b"".join(body)
    assert dict(heads[0])["Content-Length"] == str(len(sent))
    cut = page.find(b"</head>")
    if cut == -1:
        assert sent == page
    else:  # the snippet, and only it, went in right before </head>
        assert sent.startswith(page[:cut] + b"<script")
        assert sent.endswith(page[cut:])
        assert MARKER in sent[cut : len(sent) - len(page) + cut]


def test_a_server_refusing_an_html_lists_head_propagates_its_error(settings: Settings) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", HTML)])
        return [b"<html><head></head></html>"]

    def server_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        raise ValueError("refused")

    wrapped = IdentityMiddleware(app, settings)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
    with pytest.raises(ValueError, match="refused"):
        wrapped(environ, server_start_response)
    assert current_identity() is None


def test_an_app_that_starts_the_response_while_iterated_is_started_before_the_call_returns(
    settings: Settings,
) -> None:
    started: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", TEXT)  # PEP 3333 allows it on the first iteration
        yield b"late"

    def server_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        started.append(status)
        return lambda data: None

    wrapped = IdentityMiddleware(app, settings)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
    body = wrapped(environ, server_start_response)
    assert started == ["200 OK"]
    assert list(body) == [b"late"]
    body.close()  # type: ignore[attr-defined]


# -- the snippet's injection: holding start_response, write, error pages ---------------


def test_wsgi_holds_start_response_until_the_injector_decides(settings: Settings) -> None:
    events: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", HTML)])
        for chunk in (b"<html><he", b"ad>", b"</head><body>", b"end"):
            events.append(f"app yields {chunk!r}")
            yield chunk

    wrapped = IdentityMiddleware(app, settings)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
    result = wrapped(
        environ, lambda status, headers, exc_info=None: events.append("server start_response")
    )
    for chunk in result:
        events.append(f"server gets {len(chunk)} bytes")
    result.close()  # type: ignore[attr-defined]
    assert events[:4] == [
        "app yields b'<html><he'",
        "app yields b'ad>'",
        "app yields b'</head><body>'",
        "server start_response",
    ]
    assert events[4].startswith("server gets")
    assert events[-1] == "server gets 3 bytes"


@pytest.mark.parametrize(
    ("headers", "injected"),
    [
        ([("content-type", "text/html; charset=utf-8")], True),
        ([("Content-Type", "application/json"), ("CONTENT-TYPE", "text/html")], True),
        ([("Content-Type", "text/html"), ("Content-Type", "application/json")], False),
        ([("Content-Type", "application/json")], False),
    ],
    ids=["name-in-any-case", "the-last-one-counts", "not-the-first", "json"],
)
def test_a_returning_visitors_content_type_decides_the_snippet_whatever_its_spelling(
    settings: Settings, headers: list[tuple[str, str]], injected: bool
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", list(headers))
        return [PAGE]

    driver = drive(app, settings)
    driver.get("/")  # the first visit sets the cookie
    reply = driver.get("/")

    assert reply.identity_cookies == [], "a returning visitor"
    assert (b"data-posthog-identity" in reply.body) is injected
    if not injected:
        assert reply.headers == headers, (
            "a response with nothing to add goes out as the app sent it"
        )


def test_wsgi_write_goes_through_the_injector(settings: Settings) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response(
            "200 OK", [("Content-Type", HTML), ("Content-Length", str(len(PAGE)))]
        )
        write(PAGE[:20])
        write(PAGE[20:])
        return []

    reply = call_wsgi(IdentityMiddleware(app, settings), "GET", "/", {})
    assert reply.body.count(b"data-posthog-identity") == 1
    assert reply.header("Content-Length") == str(len(reply.body))


def test_wsgi_an_error_page_replaces_a_held_response(settings: Settings) -> None:
    import sys

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", HTML)])
        try:
            raise RuntimeError("template error")
        except RuntimeError:
            start_response(
                "500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info()
            )
        return [b"sorry"]

    reply = call_wsgi(IdentityMiddleware(app, settings), "GET", "/", {})
    assert (reply.status, reply.body) == (500, b"sorry")


def test_a_cors_preflight_passes_through_marked_bypassed(settings: Settings) -> None:
    seen: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(
            {"bypassed": environ.get("posthog_identity.bypassed"), "who": current_identity()}
        )
        start_response("204 No Content", [])
        return []

    reply = drive(app, settings).get(
        "/api", method="OPTIONS", headers={"Access-Control-Request-Method": "POST"}
    )
    assert reply.headers_named("Set-Cookie") == []
    assert seen == [{"bypassed": True, "who": None}]


def test_posthog_js_distinct_id_header_is_read_and_then_replaced(settings: Settings) -> None:
    browser = "0193a6b2-7c1e-7a1b-9c2d-3e4f5a6b7c8d"
    seen: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["HTTP_X_POSTHOG_DISTINCT_ID"])
        start_response("200 OK", TEXT)
        return [b"ok"]

    forged = drive(app, settings).get("/", headers={"X-POSTHOG-DISTINCT-ID": "someone-else"})
    drive(app, settings).get("/", headers={"X-POSTHOG-DISTINCT-ID": browser})
    assert seen[0] == read_cookie(forged.identity_cookies[0]).anonymous_id != "someone-else"
    assert seen[1] == browser
