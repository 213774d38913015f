"""Security properties of the identity cookie, the response headers and the snippet.

Each test drives the real middleware of one protocol in-process (the drivers
of `tests.robustness.test_fuzz`, which check that the app's chunks and the protocol are
respected), with posthog's real client recording its wire events instead of
sending them. Secure auto-detection behind a TLS-terminating proxy runs
through Werkzeug's ProxyFix in-process and through a real uvicorn with
``--proxy-headers``. docs/security.md maps each guarantee to its test.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import html5lib
import httpx
import posthog
import pytest
from werkzeug.middleware.proxy_fix import ProxyFix

from posthog_identity import NOBODY
from posthog_identity.settings import ConfigurationError, Settings
from posthog_identity.signing import CookieCodec, CookieState
from posthog_identity.testing import Sink
from tests.helpers.drivers import ADAPTERS
from tests.helpers.project import API_KEY, SECRET
from tests.helpers.servers import NoCookies, start_concurrency_site, stop_process
from tests.helpers.strict_drivers import (
    HOST,
    HTML,
    OPTIONS,
    PAGE,
    Page,
    Recorder,
    Reply,
    Request,
    call_asgi,
    call_wsgi,
    check_set_cookie,
    middleware_for,
    our_set_cookie,
    recording_client,
)
from tests.helpers.wire import COOKIE

NEWEST = "newest-secret-0123456789abcdef0123456789"
OLDER = "older-secret-0123456789abcdef01234567890"
REMOVED = "removed-secret-0123456789abcdef012345678"


@dataclass
class Site:
    """One protocol's middleware and the events its client would have sent."""

    adapter: str
    app: Any
    recorder: Recorder

    def get(self, page: Page | None = None, **request: Any) -> Reply:
        self.recorder.events.clear()
        driver = call_wsgi if self.adapter == "wsgi" else call_asgi
        return driver(self.app, Request(**request), page or Page())

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.recorder.events if e["event"] == name]


@pytest.fixture
def recording() -> Iterator[tuple[posthog.Client, Recorder]]:
    client, recorder = recording_client()
    yield client, recorder
    client.shutdown()


@pytest.fixture
def make(adapter: str, recording: tuple[posthog.Client, Recorder]) -> Any:
    """Build the site of this test's protocol with settings of the test's choosing."""
    client, recorder = recording

    def build(**overrides: Any) -> Site:
        config = Settings(**{"secrets": (SECRET,), "api_key": API_KEY, "host": HOST, **overrides})
        return Site(adapter, middleware_for(adapter, config, client), recorder)

    return build


def cookie_header(value: str) -> tuple[str, str]:
    return ("Cookie", f"{COOKIE}={value}")


def anonymous_state(anonymous_id: str | None = None) -> CookieState:
    return CookieState(anonymous_id or str(uuid.uuid4()), None, False, int(time.time()))


def set_cookies(reply: Reply) -> list[str]:
    return reply.named("Set-Cookie")


def page_identity(body: bytes) -> Any:
    """Parse the page as a browser would; our one script element's bootstrapped identity."""
    document = html5lib.parse(body.decode("utf-8"), namespaceHTMLElements=False)
    ours = [s for s in document.iter("script") if "data-posthog-identity" in s.attrib]
    assert len(ours) == 1, f"{len(ours)} snippets"
    match = OPTIONS.search(ours[0].text or "")
    assert match is not None
    return json.loads(match.group(1))["identity"]


# ---------------------------------------------------------------------------
# Secret rotation


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_cookie_signed_by_a_removed_secret_gets_a_new_anonymous_id(make: Any) -> None:
    site = make(secrets=(NEWEST, OLDER))
    old_id = str(uuid.uuid4())
    forged_by_removed = CookieCodec((REMOVED,)).dumps(anonymous_state(old_id))

    reply = site.get(headers=[cookie_header(forged_by_removed)])

    [header] = set_cookies(reply)
    cookie = CookieCodec((NEWEST, OLDER)).loads(check_value(header))
    assert cookie is not None
    assert cookie.key_index == 0
    assert cookie.state.anonymous_id != old_id
    assert page_identity(reply.body)["anonymous"] == cookie.state.anonymous_id
    [view] = site.events("Fuzzed")
    assert view["distinct_id"] == cookie.state.anonymous_id


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_cookie_signed_by_a_kept_older_secret_is_accepted_and_resigned_with_the_newest(
    make: Any,
) -> None:
    site = make(secrets=(NEWEST, OLDER))
    anonymous_id = str(uuid.uuid4())
    by_older = CookieCodec((OLDER,)).dumps(anonymous_state(anonymous_id))

    reply = site.get(headers=[cookie_header(by_older)])

    [header] = set_cookies(reply)
    value = check_value(header)
    resigned = CookieCodec((NEWEST, OLDER)).loads(value)
    assert resigned is not None
    assert resigned.key_index == 0, "not signed with the newest secret"
    assert CookieCodec((OLDER,)).loads(value) is None
    assert resigned.state.anonymous_id == anonymous_id
    assert page_identity(reply.body)["anonymous"] == anonymous_id


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_signed_in_cookie_from_an_older_secret_is_rekeyed_when_its_user_is_seen(
    make: Any,
) -> None:
    site = make(secrets=(NEWEST, OLDER))
    older = CookieCodec((OLDER,))
    anonymous_id = str(uuid.uuid4())
    state = anonymous_state(anonymous_id)._replace(user_hash=older.user_hash("kim"), linked=True)

    reply = site.get(Page(user="kim"), headers=[cookie_header(older.dumps(state))])

    [header] = set_cookies(reply)
    newest = CookieCodec((NEWEST,))
    resigned = newest.loads(check_value(header))
    assert resigned is not None
    assert resigned.state.anonymous_id == anonymous_id
    assert resigned.state.user_hash == newest.user_hash("kim")
    assert site.events("$create_alias") == [], "an already linked id is never linked again"
    [view] = site.events("Fuzzed")
    assert view["distinct_id"] == "kim"


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_the_cookie_holds_no_user_id_and_does_not_grow_with_it(make: Any) -> None:
    site = make()
    short, long = "alice@example.com", "bob-" + "x" * 10_000 + "@example.com"
    values = []
    for user in (short, long):
        reply = site.get(Page(identify=user))
        [header] = set_cookies(reply)
        values.append(check_value(header))

    assert len(values[0]) == len(values[1])
    for value in values:
        payload, _, _signature = value.rpartition(".")
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        assert b"@example.com" not in raw
        assert b"alice" not in raw
        assert b"xxxx" not in raw


def check_value(header: str) -> str:
    name, _, rest = header.partition("=")
    assert name == COOKIE
    return rest.split(";", 1)[0]


# ---------------------------------------------------------------------------
# Cookie attributes


@dataclass(frozen=True)
class Expect:
    secure: bool
    samesite: str = "Lax"
    domain: str | None = None
    name: str = COOKIE
    max_age: str = "31536000"


ATTRIBUTES = [
    pytest.param({}, "http", Expect(secure=False), id="auto-over-http"),
    pytest.param({}, "https", Expect(secure=True), id="auto-over-https"),
    pytest.param({"cookie_secure": True}, "http", Expect(secure=True), id="secure-true-http"),
    pytest.param({"cookie_secure": False}, "https", Expect(secure=False), id="secure-false-https"),
    pytest.param({"cookie_samesite": "Strict"}, "https", Expect(True, "Strict"), id="strict-https"),
    pytest.param({"cookie_samesite": "Strict"}, "http", Expect(False, "Strict"), id="strict-http"),
    pytest.param(
        {"cookie_samesite": "None"}, "http", Expect(True, "None"), id="none-forces-secure"
    ),
    pytest.param(
        {"cookie_samesite": "None", "cookie_secure": True},
        "https",
        Expect(True, "None"),
        id="none-secure-https",
    ),
    pytest.param(
        {"cookie_domain": "example.com"}, "http", Expect(False, domain="example.com"), id="domain"
    ),
    pytest.param(
        {"cookie_domain": ".example.com"},
        "https",
        Expect(True, domain="example.com"),
        id="domain-leading-dot",
    ),
    pytest.param(
        {"cookie_name": "sid", "cookie_max_age": 3600},
        "http",
        Expect(False, name="sid", max_age="3600"),
        id="name-and-max-age",
    ),
    # A browser keeps a __Host- cookie only when Secure, Path=/ and without Domain:
    # no sibling subdomain can plant or overwrite it.
    pytest.param(
        {"cookie_name": "__Host-ph_identity", "cookie_secure": True},
        "https",
        Expect(True, name="__Host-ph_identity"),
        id="host-prefix",
    ),
]


def cookie_attributes(header: str) -> tuple[str, dict[str, str | bool]]:
    first, *rest = (part.strip() for part in header.split(";"))
    assert "\r" not in header
    assert "\n" not in header
    attributes: dict[str, str | bool] = {}
    for part in rest:
        key, sep, value = part.partition("=")
        assert key.lower() not in attributes, f"{key} twice"
        attributes[key.lower()] = value if sep else True
    return first.partition("=")[0], attributes


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(("overrides", "scheme", "expect"), ATTRIBUTES)
def test_the_cookie_carries_the_configured_attributes_and_is_always_httponly(
    make: Any, overrides: dict[str, Any], scheme: str, expect: Expect
) -> None:
    site = make(**overrides)

    reply = site.get(scheme=scheme)

    [header] = set_cookies(reply)
    name, attributes = cookie_attributes(header)
    assert name == expect.name
    expected = {
        "expires": attributes.get("expires"),
        "max-age": expect.max_age,
        "path": "/",
        "httponly": True,
        "samesite": expect.samesite,
    }
    if expect.secure:
        expected["secure"] = True
    if expect.domain is not None:
        expected["domain"] = expect.domain
    assert attributes == expected


def test_samesite_none_with_secure_off_is_refused_at_start_up() -> None:
    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_COOKIE_SAMESITE"):
        Settings(secrets=(SECRET,), cookie_samesite="None", cookie_secure=False)


# ---------------------------------------------------------------------------
# Header injection through user ids

HEADER_BREAKERS = [
    pytest.param("kim\r\nX-Injected: yes", id="crlf-header"),
    pytest.param("kim\nX-Injected: yes", id="lf-header"),
    pytest.param("kim\rX-Injected: yes", id="cr-header"),
    pytest.param("kim\r\nSet-Cookie: ph_identity=forged; Path=/", id="crlf-set-cookie"),
    pytest.param("kim\r\n\r\n<script>alert('body')</script>", id="crlf-body"),
    pytest.param("kim; Domain=evil.example; Path=/admin; Max-Age=1", id="semicolon-attributes"),
    pytest.param("kim;ph_identity=forged", id="semicolon-cookie"),
    pytest.param("kim,\x00X-Injected", id="comma-nul"),
]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("how", ["identify_user", "callback"])
@pytest.mark.parametrize("user", HEADER_BREAKERS)
def test_ids_with_crlf_or_semicolons_cannot_split_or_inject_headers(
    make: Any, how: str, user: str
) -> None:
    site = make()
    page = Page(identify=user) if how == "identify_user" else Page(user=user)

    reply = site.get(page, headers=[cookie_header(CookieCodec((SECRET,)).dumps(anonymous_state()))])

    cookie = our_set_cookie(reply, Page().headers)
    assert cookie is not None
    assert cookie.state.user_hash == CookieCodec((SECRET,)).user_hash(user)
    assert [k.lower() for k, _ in reply.headers] == ["content-type", "content-length", "set-cookie"]
    # Fragments long or odd enough never to turn up in a base64 value by chance.
    for name, value in reply.headers:
        assert user not in value
        for fragment in ("X-Injected", "evil.example", "=forged", "alert(", "/admin"):
            assert fragment not in name + value, (name, value)
    assert page_identity(reply.body)["user"] == user


# ---------------------------------------------------------------------------
# Script injection through user ids

SCRIPT_BREAKERS = [
    pytest.param("</script><script>alert(1)</script>", id="close-script"),
    pytest.param("</SCRIPT ><img src=x onerror=alert(1)>", id="upper-close-script"),
    pytest.param("</script\t>", id="close-script-tab"),
    pytest.param("<!--<script>", id="comment-open-script"),
    pytest.param("--><script>alert(1)</script>", id="comment-close"),
    pytest.param("<![CDATA[</script>]]>", id="cdata"),
    pytest.param('"};alert(1);//', id="json-quote"),
    pytest.param("'};alert(1);//", id="single-quote"),
    pytest.param('\\";alert(1);//', id="backslash-quote"),
    pytest.param("\u2028alert(1)\u2029", id="line-separators"),
    pytest.param("&lt;/script&gt;&#x3c;/script>", id="entities"),
    pytest.param("</head><body onload=alert(1)>", id="head-body"),
    pytest.param("${alert(1)}`", id="template"),
    pytest.param("\x00</script>", id="nul"),
]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("user", SCRIPT_BREAKERS)
def test_ids_designed_to_break_out_of_the_script_are_inert(make: Any, user: str) -> None:
    site = make()

    reply = site.get(Page(identify=user))

    document = html5lib.parse(reply.body.decode("utf-8"), namespaceHTMLElements=False)
    elements = [element.tag for element in document.iter() if isinstance(element.tag, str)]
    page = html5lib.parse(PAGE.decode(), namespaceHTMLElements=False)
    expected = [element.tag for element in page.iter() if isinstance(element.tag, str)]
    # The page's own elements, plus exactly one script: ours.
    assert sorted(elements) == sorted([*expected, "script"])
    assert document.find(".//body").attrib == {}
    assert page_identity(reply.body) == {
        "anonymous": page_identity(reply.body)["anonymous"],
        "user": user,
        "signedIn": True,
    }


# ---------------------------------------------------------------------------
# Shared caches


SHARED = ["public, max-age=60", "max-age=60, s-maxage=600", "S-MAXAGE=10", "PUBLIC"]
PRIVATE = ["private, max-age=60", "no-store", "max-age=60"]


def _with_cache_control(value: str, identify: object = None) -> Page:
    headers = [("Content-Type", HTML), ("Content-Length", str(len(PAGE))), ("Cache-Control", value)]
    if identify is None:
        return Page(headers=headers)
    return Page(headers=headers, identify=identify)


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("cache_control", SHARED)
def test_a_shared_cacheable_page_gets_no_set_cookie_and_no_id(
    make: Any, cache_control: str
) -> None:
    site = make()
    anonymous_id = str(uuid.uuid4())
    visitor = cookie_header(CookieCodec((SECRET,)).dumps(anonymous_state(anonymous_id)))

    new_visitor = site.get(_with_cache_control(cache_control))
    logging_in = site.get(_with_cache_control(cache_control, "kim-the-user"), headers=[visitor])

    for reply in (new_visitor, logging_in):
        assert set_cookies(reply) == []
        assert page_identity(reply.body) is None
    assert anonymous_id.encode() not in logging_in.body
    assert b"kim-the-user" not in logging_in.body


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("cache_control", PRIVATE)
def test_a_private_page_gets_the_cookie_and_the_id(make: Any, cache_control: str) -> None:
    site = make()

    reply = site.get(_with_cache_control(cache_control))

    [header] = set_cookies(reply)
    cookie = CookieCodec((SECRET,)).loads(check_value(header))
    assert cookie is not None
    assert page_identity(reply.body)["anonymous"] == cookie.state.anonymous_id


# ---------------------------------------------------------------------------
# Client-controlled PostHog headers

TRACING_HEADERS = [
    ("X-POSTHOG-DISTINCT-ID", "victim-user"),
    ("X-POSTHOG-SESSION-ID", "attacker-session"),
]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("user", [None, "kim"], ids=["anonymous", "signed-in"])
def test_the_client_sent_distinct_id_header_never_overrides_the_cookies_identity(
    make: Any, user: str | None
) -> None:
    site = make()
    anonymous_id = str(uuid.uuid4())
    visitor = cookie_header(CookieCodec((SECRET,)).dumps(anonymous_state(anonymous_id)))

    reply = site.get(Page(user=user or NOBODY), headers=[visitor, *TRACING_HEADERS])

    [view] = site.events("Fuzzed")
    assert view["distinct_id"] == (user or anonymous_id)
    assert view["properties"].get("$session_id") != "attacker-session"
    assert page_identity(reply.body)["anonymous"] == anonymous_id


def _posthog_asgi_outside(app: Any, client: posthog.Client) -> Any:
    from posthog.integrations.asgi import PosthogASGIMiddleware

    return PosthogASGIMiddleware(app, client=client)


def test_posthogs_own_asgi_middleware_outside_ours_cannot_override_the_identity(
    recording: tuple[posthog.Client, Recorder],
) -> None:
    client, recorder = recording
    config = Settings(secrets=(SECRET,), api_key=API_KEY, host=HOST)
    app = _posthog_asgi_outside(middleware_for("asgi", config, client), client)
    site = Site("asgi", app, recorder)
    anonymous_id = str(uuid.uuid4())
    visitor = cookie_header(CookieCodec((SECRET,)).dumps(anonymous_state(anonymous_id)))

    site.get(headers=[visitor, *TRACING_HEADERS])

    [view] = site.events("Fuzzed")
    assert view["distinct_id"] == anonymous_id


def test_posthogs_own_asgi_middleware_inside_ours_cannot_override_the_identity(
    recording: tuple[posthog.Client, Recorder],
) -> None:
    from posthog_identity.asgi import IdentityMiddleware

    client, recorder = recording
    config = Settings(secrets=(SECRET,), api_key=API_KEY, host=HOST)
    from tests.helpers.strict_drivers import asgi_app

    inner = _posthog_asgi_outside(asgi_app(client), client)
    site = Site("asgi", IdentityMiddleware(inner, config, client=client), recorder)
    anonymous_id = str(uuid.uuid4())
    visitor = cookie_header(CookieCodec((SECRET,)).dumps(anonymous_state(anonymous_id)))

    site.get(headers=[visitor, *TRACING_HEADERS])

    [view] = site.events("Fuzzed")
    assert view["distinct_id"] == anonymous_id


# ---------------------------------------------------------------------------
# Secure behind a TLS-terminating proxy


@pytest.mark.parametrize(
    ("proxy_fix", "forwarded", "secure"),
    [
        pytest.param(True, "https", True, id="proxyfix-https"),
        pytest.param(True, None, False, id="proxyfix-no-header"),
        pytest.param(False, "https", False, id="no-proxyfix-header-ignored"),
    ],
)
def test_behind_a_tls_proxy_werkzeug_proxyfix_makes_the_auto_cookie_secure(
    recording: tuple[posthog.Client, Recorder],
    proxy_fix: bool,
    forwarded: str | None,
    secure: bool,
) -> None:
    client, recorder = recording
    config = Settings(secrets=(SECRET,), api_key=API_KEY, host=HOST)
    app = middleware_for("wsgi", config, client)
    if proxy_fix:
        app = ProxyFix(app, x_proto=1)
    headers = [] if forwarded is None else [("X-Forwarded-Proto", forwarded)]

    reply = Site("wsgi", app, recorder).get(headers=headers)

    [header] = set_cookies(reply)
    check_set_cookie(header, secure=secure)


@pytest.mark.parametrize(
    ("trusted", "secure"),
    [
        pytest.param("127.0.0.1", True, id="proxy-trusted"),
        pytest.param("10.255.255.1", False, id="proxy-not-trusted"),
    ],
)
def test_behind_a_tls_proxy_uvicorn_proxy_headers_make_the_auto_cookie_secure(
    sink: Sink, tmp_path: Path, trusted: str, secure: bool
) -> None:
    running = start_concurrency_site(
        "uvicorn", sink.url, tmp_path, "--proxy-headers", f"--forwarded-allow-ips={trusted}"
    )
    try:
        with httpx.Client(base_url=running.url, timeout=10.0, cookies=NoCookies()) as http:
            forwarded = http.get(
                "/page", params={"marker": "p"}, headers={"X-Forwarded-Proto": "https"}
            )
            direct = http.get("/page", params={"marker": "d"})
    finally:
        stop_process(running.process)

    check_set_cookie(forwarded.headers["set-cookie"], secure=secure)
    check_set_cookie(direct.headers["set-cookie"], secure=False)
