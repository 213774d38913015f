"""The pytest plugin as users meet it: a test module of theirs, run by pytest, using `posthog_sink`.

Each user module runs in its own pytest subprocess (`pytester`), with the
plugin loaded from its entry point, and a real posthog client posting over
HTTP to the session's sink on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points

import posthog
import pytest

from posthog_identity.testing import LoginLink, PostHogSink
from posthog_identity.testing.fixture import TEST_SECRET
from tests.helpers.project import ROOT

pytest_plugins = ["pytester"]

EXAMPLES = ROOT / "examples" / "testing"

# A user's test module: a tiny WSGI and a tiny ASGI app with the middleware,
# each logging a visitor in; their views capture with the app's own client.
USER_TESTS = '''
import asyncio

import posthog
import pytest
from werkzeug.test import Client as Browser

from posthog_identity import identify_user
from posthog_identity.asgi import IdentityMiddleware as ASGIIdentity
from posthog_identity.wsgi import IdentityMiddleware as WSGIIdentity


@pytest.fixture
def client(posthog_sink, monkeypatch):
    monkeypatch.setenv("POSTHOG_IDENTITY_SECRET", "a-test-secret-that-is-32-chars-long")
    client = posthog.Client(posthog_sink.api_key, host=posthog_sink.url)
    yield client
    client.shutdown()


def wsgi_site(client):
    def view(environ, start_response):
        if environ["PATH_INFO"] == "/login":
            identify_user("user-42")
        client.capture("page viewed", properties={"path": environ["PATH_INFO"]})
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return WSGIIdentity(view, client=client)


def asgi_site(client):
    async def view(scope, receive, send):
        if scope["path"] == "/login":
            identify_user("user-42")
        client.capture("page viewed", properties={"path": scope["path"]})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return ASGIIdentity(view, client=client)


def visit_asgi(app, path, cookie):
    """One GET through an ASGI app; returns the identity cookie it set, if any."""
    headers = [(b"cookie", cookie.encode())] if cookie else []
    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
             "root_path": "", "query_string": b"", "headers": headers, "scheme": "http",
             "server": ("testserver", 80), "client": ("127.0.0.1", 1), "http_version": "1.1",
             "asgi": {"version": "3.0"}}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    for name, value in sent[0]["headers"]:
        if name.lower() == b"set-cookie" and value.startswith(b"ph_identity="):
            return value.decode().split(";")[0]
    return cookie


def test_wsgi_login_links_the_visitor_and_captures_the_view(posthog_sink, client):
    browser = Browser(wsgi_site(client))
    browser.get("/")
    browser.get("/login")

    posthog_sink.flush(client)
    anonymous = posthog_sink.events("page viewed")[0]
    link = posthog_sink.assert_login_link("user-42", anonymous["distinct_id"])
    assert link.user_id == "user-42"
    assert posthog_sink.assert_captured("page viewed", distinct_id="user-42")


def test_asgi_login_links_the_visitor_and_captures_the_view(posthog_sink, client):
    app = asgi_site(client)
    cookie = visit_asgi(app, "/", None)
    visit_asgi(app, "/login", cookie)

    posthog_sink.flush(client)
    anonymous = posthog_sink.events("page viewed")[0]
    [link] = posthog_sink.login_links("user-42")
    assert link.anonymous_id == anonymous["distinct_id"]
    assert posthog_sink.assert_captured("page viewed", distinct_id="user-42")
'''


def run_user_tests(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_user=source)
    # The user's environment: none of this project's own test configuration.
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


def test_a_user_module_asserts_the_login_link_and_captures_of_wsgi_and_asgi_apps(
    pytester: pytest.Pytester,
) -> None:
    result = run_user_tests(pytester, USER_TESTS)
    result.assert_outcomes(passed=2)


def test_a_failing_capture_assertion_names_what_arrived_instead(
    pytester: pytest.Pytester,
) -> None:
    source = (
        USER_TESTS
        + """

def test_expects_an_event_that_was_renamed(posthog_sink, client):
    Browser(wsgi_site(client)).get("/")
    posthog_sink.assert_captured("page visited", timeout=0.2)
"""
    )
    result = run_user_tests(pytester, source, "-k", "renamed")

    result.assert_outcomes(failed=1)
    result.stdout.re_match_lines(
        [
            r".*AssertionError: expected one 'page visited' event, got 0; 1 event\(s\) "
            r"arrived, as \(event, distinct_id\): \[\('page viewed', '[0-9a-f-]{36}'\)\]"
        ]
    )


def test_a_failing_login_link_assertion_names_what_arrived_instead(
    pytester: pytest.Pytester,
) -> None:
    source = (
        USER_TESTS
        + """

def test_expects_a_link_that_never_happened(posthog_sink, client):
    Browser(wsgi_site(client)).get("/")
    posthog_sink.assert_login_link("user-42", timeout=0.2)
"""
    )
    result = run_user_tests(pytester, source, "-k", "never_happened")

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*AssertionError: expected one login link of user 'user-42', got 0; 1 event(s) arrived*"]
    )


def test_each_test_starts_with_no_events_and_no_flags(pytester: pytest.Pytester) -> None:
    source = """
import posthog

def test_first(posthog_sink):
    posthog_sink.serve_flags({"beta": True})
    client = posthog.Client(posthog_sink.api_key, host=posthog_sink.url)
    client.capture("first", distinct_id="u")  # left queued: the next test must not see it
    client.shutdown()

def test_second(posthog_sink):
    client = posthog.Client(posthog_sink.api_key, host=posthog_sink.url, sync_mode=True)
    assert posthog_sink.events() == []
    assert client.get_feature_flag("beta", "u") is None
"""
    run_user_tests(pytester, source, "-W", "ignore::DeprecationWarning").assert_outcomes(passed=2)


# A user's module as the docs tell it: no secret, no key, the app reads the
# environment the fixture set.
NO_SECRET_TESTS = """
import time

import posthog
import pytest
from werkzeug.test import Client as Browser

from posthog_identity import identify_user
from posthog_identity.wsgi import IdentityMiddleware


def view(environ, start_response):
    if environ["PATH_INFO"] == "/login":
        identify_user("ada")
    posthog.capture("page viewed")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.fixture
def browser(posthog_sink):
    return Browser(IdentityMiddleware(view))


def test_login_links_the_visitor(posthog_sink, browser):
    browser.get("/")
    browser.get("/login")
    link = posthog_sink.assert_login_link("ada")
    [visit, _] = posthog_sink.events("page viewed")
    assert link.anonymous_id == visit["distinct_id"]


def test_expects_an_event_that_was_renamed(posthog_sink, browser):
    browser.get("/")
    started = time.monotonic()
    try:
        posthog_sink.assert_captured("page visited")
    finally:
        print(f"failed after {time.monotonic() - started:.2f}s")


def test_expects_a_link_that_never_happened(posthog_sink, browser):
    browser.get("/")
    started = time.monotonic()
    try:
        posthog_sink.assert_login_link("ada")
    finally:
        print(f"failed after {time.monotonic() - started:.2f}s")
"""


@pytest.fixture
def no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("POSTHOG_IDENTITY_SECRET", "POSTHOG_API_KEY", "POSTHOG_PROJECT_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def user_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's own secret: the tests of the assertions depend on nothing else."""
    monkeypatch.setenv("POSTHOG_IDENTITY_SECRET", "the-users-own-secret-of-32-or-more-chars")


def test_a_user_module_with_no_secret_set_gets_a_test_secret(
    pytester: pytest.Pytester, no_secret: None
) -> None:
    result = run_user_tests(pytester, NO_SECRET_TESTS, "-k", "links_the_visitor")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("test", ["renamed", "never_happened"])
def test_after_the_flush_a_missing_event_fails_at_once(
    pytester: pytest.Pytester, user_secret: None, test: str
) -> None:
    result = run_user_tests(pytester, NO_SECRET_TESTS, "-k", test)

    result.assert_outcomes(failed=1)
    [waited] = [float(m) for m in re.findall(r"failed after ([\d.]+)s", result.stdout.str())]
    # The wait it replaced was 5 s; a flush to 127.0.0.1 takes milliseconds.
    assert waited < 2.5, result.stdout.str()


@pytest.mark.parametrize(
    ("test", "call"),
    [
        ("renamed", 'posthog_sink.assert_captured("page visited")'),
        ("never_happened", 'posthog_sink.assert_login_link("ada")'),
    ],
)
def test_a_failing_assertion_shows_the_users_line_not_the_plugins_frames(
    pytester: pytest.Pytester, user_secret: None, test: str, call: str
) -> None:
    result = run_user_tests(pytester, NO_SECRET_TESTS, "-k", test)

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f">*{call}", "E   *AssertionError: expected one *"])
    result.stdout.no_fnmatch_line("*posthog_identity*testing*.py:*")
    result.stdout.no_fnmatch_line("*__tracebackhide__*")


ENVIRONMENT_TESTS = """
import os

import pytest

@pytest.fixture(scope="module", autouse=True)
def after_the_test():
    yield
    print("after:", os.environ.get("POSTHOG_HOST"), os.environ.get("POSTHOG_API_KEY"))
    print("secret after:", os.environ.get("POSTHOG_IDENTITY_SECRET"))

def test_inside(posthog_sink):
    assert posthog_sink.url.startswith("http://127.0.0.1:")
    assert os.environ["POSTHOG_HOST"] == posthog_sink.url
    print("inside:", os.environ["POSTHOG_API_KEY"], posthog_sink.api_key)
    print("secret inside:", os.environ.get("POSTHOG_IDENTITY_SECRET"))
"""


def run_with_environment(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    api_key: str | None,
    secret: str | None = None,
) -> pytest.RunResult:
    pytester.makepyfile(test_user=ENVIRONMENT_TESTS)
    monkeypatch.setenv("POSTHOG_HOST", "https://example.invalid")
    if secret is None:
        monkeypatch.delenv("POSTHOG_IDENTITY_SECRET", raising=False)
    else:
        monkeypatch.setenv("POSTHOG_IDENTITY_SECRET", secret)
    monkeypatch.delenv("POSTHOG_PROJECT_API_KEY", raising=False)
    if api_key is None:
        monkeypatch.delenv("POSTHOG_API_KEY", raising=False)
    else:
        monkeypatch.setenv("POSTHOG_API_KEY", api_key)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=1)
    return result


def test_the_fixture_points_posthog_host_at_the_sink_and_restores_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run_with_environment(pytester, monkeypatch, None)
    result.stdout.fnmatch_lines(
        [
            "*inside: phc_posthog_identity_test phc_posthog_identity_test*",
            "*after: https://example.invalid None*",
        ]
    )


def test_the_fixture_keeps_an_api_key_the_environment_has(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run_with_environment(pytester, monkeypatch, "phc_mine")
    result.stdout.fnmatch_lines(
        ["*inside: phc_mine phc_mine*", "*after: https://example.invalid phc_mine*"]
    )


def test_the_fixture_sets_a_test_secret_when_none_is_set_and_restores_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run_with_environment(pytester, monkeypatch, None)
    result.stdout.fnmatch_lines([f"*secret inside: {TEST_SECRET}", "*secret after: None*"])
    assert len(TEST_SECRET) >= 32, "long enough to start without the short-secret warning"


def test_the_fixture_keeps_a_secret_the_environment_has(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run_with_environment(pytester, monkeypatch, None, secret="mine")
    result.stdout.fnmatch_lines(["*secret inside: mine", "*secret after: mine*"])


@pytest.mark.parametrize("example", ["test_flask_analytics.py", "test_fastapi_analytics.py"])
def test_the_documented_examples_pass(pytester: pytest.Pytester, example: str) -> None:
    pytester.makepyfile(**{example[:-3]: (EXAMPLES / example).read_text(encoding="utf-8")})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


# -- the query API, in this project's own session ---------------------------------


@pytest.fixture
def ph(posthog_sink: PostHogSink) -> Iterator[posthog.Client]:
    client = posthog.Client(posthog_sink.api_key, host=posthog_sink.url, flush_interval=30)
    yield client
    client.shutdown()


def test_flush_waits_for_the_clients_background_thread(
    posthog_sink: PostHogSink, ph: posthog.Client
) -> None:
    ph.capture("signed up", distinct_id="u1")
    posthog_sink.flush(ph)
    assert [e["event"] for e in posthog_sink.events()] == ["signed up"]


def test_events_filter_by_name_and_distinct_id(
    posthog_sink: PostHogSink, ph: posthog.Client
) -> None:
    ph.capture("signed up", distinct_id="u1")
    ph.capture("signed up", distinct_id="u2")
    ph.capture("logged in", distinct_id="u1")
    posthog_sink.flush(ph)

    assert [e["distinct_id"] for e in posthog_sink.events("signed up")] == ["u1", "u2"]
    assert [e["event"] for e in posthog_sink.events(distinct_id="u1")] == [
        "signed up",
        "logged in",
    ]


def test_login_links_read_the_user_from_the_distinct_id_and_the_visitor_from_the_alias(
    posthog_sink: PostHogSink, ph: posthog.Client
) -> None:
    # posthog-python's argument names read backwards: this sends distinct_id
    # "user-1" and properties.alias "anon-1".
    ph.alias(previous_id="user-1", distinct_id="anon-1")
    ph.alias(previous_id="user-2", distinct_id="anon-2")
    posthog_sink.flush(ph)

    [link] = posthog_sink.login_links("user-1")
    assert (link.user_id, link.anonymous_id) == ("user-1", "anon-1")
    assert isinstance(link, LoginLink)
    assert len(posthog_sink.login_links()) == 2


def test_wait_for_returns_the_events_once_the_predicate_holds(
    posthog_sink: PostHogSink, ph: posthog.Client
) -> None:
    ph.capture("a", distinct_id="u")
    ph.capture("b", distinct_id="u")
    ph.flush()
    events = posthog_sink.wait_for(lambda events: len(events) == 2, timeout=5)
    assert [e["event"] for e in events] == ["a", "b"]


def test_wait_for_fails_as_an_assertion_listing_what_arrived(
    posthog_sink: PostHogSink, ph: posthog.Client
) -> None:
    ph.capture("a", distinct_id="u")
    posthog_sink.flush(ph)
    with pytest.raises(AssertionError, match=r"named 'b'.*\[\('a', 'u'\)\]"):
        posthog_sink.wait_for(name="b", timeout=0.1)


def test_flags_are_served_from_the_definitions_the_test_gives(
    posthog_sink: PostHogSink,
) -> None:
    pro_only = {
        "key": "pro-dashboard",
        "active": True,
        "filters": {
            "groups": [
                {
                    "properties": [{"key": "plan", "value": ["pro"], "type": "person"}],
                    "rollout_percentage": 100,
                }
            ]
        },
    }
    posthog_sink.serve_flags({"beta": "test"}, definitions=[pro_only])
    client = posthog.Client(posthog_sink.api_key, host=posthog_sink.url, sync_mode=True)
    try:
        flags = client.get_all_flags("u", person_properties={"plan": "pro"})
        free = client.get_all_flags("u", person_properties={"plan": "free"})
    finally:
        client.shutdown()

    assert flags == {"beta": "test", "pro-dashboard": True}
    assert free == {"beta": "test", "pro-dashboard": False}


# -- the plugin's registration and cost -------------------------------------------


def test_the_plugin_is_registered_as_posthog_identity() -> None:
    [plugin] = [e for e in entry_points(group="pytest11") if e.name == "posthog_identity"]
    assert plugin.value == "posthog_identity.testing.plugin"


def test_loading_the_plugin_imports_neither_posthog_nor_werkzeug() -> None:
    code = (
        "import json, sys\n"
        "import posthog_identity.testing.plugin\n"
        "heavy = ('posthog', 'werkzeug', 'itsdangerous')\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(done.stdout) == []
