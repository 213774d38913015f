"""One request's `Exchange` over a real `Engine`: when it resolves again, the one id it mints,
the `ResponsePlan` it returns for each kind of response, and when the login link leaves.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from posthog.client import Client

from posthog_identity.engine import Engine
from posthog_identity.exchange import Exchange, RequestInfo
from posthog_identity.identity import NOBODY, NOTHING, Link, Report, browser_id
from posthog_identity.response import UNTOUCHED, ResponsePlan
from posthog_identity.session import distinct_id_from_cookie, identified_in_cookie
from posthog_identity.settings import Settings
from posthog_identity.signing import CookieCodec, CookieState
from posthog_identity.testing import Sink
from tests.helpers.pages import snippet_options
from tests.helpers.posthog_js import PERSISTENCE
from tests.helpers.posthog_js import posthog_js_cookie as persistence_cookie
from tests.helpers.project import SECRET
from tests.helpers.wire import ALIAS, COOKIE, parse_set_cookie, read_cookie

REQUEST = RequestInfo("GET", "http", "/")
HTML = [("Content-Type", "text/html; charset=utf-8")]
JSON = [("Content-Type", "application/json")]
PUBLIC = [("Cache-Control", "public, max-age=60")]
PAGE = b"<html><head><title>t</title></head><body>hi</body></html>"


@pytest.fixture
def engine(settings: Settings, client: Client) -> Engine:
    return Engine(settings, client)


def returning(anonymous_id: str | None = None) -> RequestInfo:
    """A request carrying a fresh anonymous cookie: nothing is due to be written."""
    state = CookieState(anonymous_id or str(uuid.uuid4()), issued_at=int(time.time()))
    return REQUEST._replace(cookie_header=f"{COOKIE}={CookieCodec((SECRET,)).dumps(state)}")


def identity_cookies(plan: ResponsePlan) -> list[str]:
    """The values of the plan's identity Set-Cookie lines."""
    parsed = [parse_set_cookie(value) for name, value in plan.headers if name == "Set-Cookie"]
    return [cookie.value for cookie in parsed if cookie.name == COOKIE]


def page_through(plan: ResponsePlan) -> tuple[bytes, list[tuple[str, str]]]:
    """The page and its head as the plan sends them."""
    assert plan.body is not None
    body = b"".join(plan.body.feed(PAGE) + plan.body.finish())
    return body, plan.body.headers([*HTML, ("Content-Length", str(len(PAGE)))])


# -- what the request says -----------------------------------------------------------


def test_the_resolution_is_kept_until_what_the_request_says_changes(engine: Engine) -> None:
    exchange = Exchange(engine, REQUEST)
    first = exchange.resolution
    assert exchange.resolution is first

    exchange.report("kim")
    reported = exchange.resolution
    exchange.report("kim")
    exchange.report(NOTHING)

    assert reported is not first
    assert exchange.resolution is reported, "the same report, or nothing, changes nothing"
    assert exchange.identity.user_id == "kim"
    exchange.set_explicit("kim")
    assert exchange.resolution is not reported, "identify_user() always resolves again"


@pytest.mark.parametrize(
    ("report", "changes"),
    [(NOTHING, False), ("kim", False), (NOBODY, True), ("bob", True)],
    ids=["nothing", "the-same-user", "nobody", "another-user"],
)
def test_changes_tells_whether_a_report_would_change_what_the_request_says(
    engine: Engine, report: Report, changes: bool
) -> None:
    exchange = Exchange(engine, REQUEST, report="kim")

    assert exchange.changes(report) is changes


def test_a_new_visitor_keeps_one_minted_id_however_often_the_request_resolves_again(
    engine: Engine,
) -> None:
    exchange = Exchange(engine, REQUEST)
    anonymous = exchange.identity
    exchange.report("kim")
    signed_in = exchange.identity
    exchange.set_explicit(NOBODY)
    forgotten = exchange.identity

    assert signed_in.user_id == "kim"
    assert anonymous.anonymous_id == signed_in.anonymous_id == forgotten.anonymous_id
    [cookie] = identity_cookies(exchange.respond(200, JSON))
    assert read_cookie(cookie).anonymous_id == anonymous.anonymous_id


def test_without_consent_the_request_keeps_one_unstored_id_that_a_grant_does_not_reuse(
    settings: Settings, client: Client
) -> None:
    engine = Engine(replace(settings, consent="opt-in"), client)
    exchange = Exchange(engine, REQUEST)
    unconsented = exchange.identity
    exchange.report("alice")

    assert not unconsented.consented
    assert exchange.identity.distinct_id == unconsented.distinct_id, "never the user's id"
    assert exchange.respond(200, JSON).headers == ()

    assert exchange.set_consent(True)
    [cookie] = identity_cookies(exchange.respond(200, JSON))
    assert read_cookie(cookie).anonymous_id != unconsented.anonymous_id


def test_asking_consent_again_decides_the_request_with_the_callables_new_answer(
    settings: Settings, client: Client
) -> None:
    answers: list[bool | None] = [None, True]

    def consent(native: object) -> bool | None:
        return answers.pop(0)

    engine = Engine(replace(settings, consent="opt-in"), client, consent=consent)
    exchange = Exchange(engine, REQUEST)
    assert not exchange.identity.consented

    exchange.ask_consent_again()

    assert exchange.identity.consented
    assert answers == []


# -- the response --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "status", "headers", "sets_cookie", "rewrites_body"),
    [
        ("GET", 200, HTML, True, True),
        ("GET", 404, HTML, True, True),
        ("HEAD", 200, HTML, True, False),
        ("GET", 304, HTML, True, False),
        ("GET", 200, JSON, True, False),
        ("GET", 200, HTML + PUBLIC, False, True),
        ("GET", 200, JSON + PUBLIC, False, False),
        ("GET", 200, [*JSON, ("Cache-Control", "s-maxage=60")], False, False),
    ],
    ids=["page", "error-page", "head", "not-modified", "json", "shared-page", "shared-json", "cdn"],
)
def test_the_plan_for_a_new_visitor(
    engine: Engine,
    method: str,
    status: int,
    headers: list[tuple[str, str]],
    sets_cookie: bool,
    rewrites_body: bool,
) -> None:
    plan = Exchange(engine, REQUEST._replace(method=method)).respond(status, headers)

    assert len(identity_cookies(plan)) == (1 if sets_cookie else 0)
    assert len(plan.headers) == len(identity_cookies(plan))
    assert (plan.body is not None) is rewrites_body


def test_a_returning_visitor_costs_nothing_but_the_pages_snippet(engine: Engine) -> None:
    exchange = Exchange(engine, returning())

    assert exchange.respond(200, JSON) == UNTOUCHED
    page = exchange.respond(200, HTML)
    assert page.headers == ()
    assert page.body is not None


def exchange_of(
    kind: str, engine: Engine, settings: Settings, client: Client, method: str = "GET"
) -> Exchange:
    """An exchange of one kind that decides differently at response start."""
    request = returning()._replace(method=method)
    if kind == "new-visitor":
        return Exchange(engine, REQUEST._replace(method=method))
    if kind == "login":
        return Exchange(engine, request, report="kim")
    if kind == "consent-mode":
        return Exchange(Engine(replace(settings, consent="opt-in"), client), request)
    if kind == "no-snippet":
        return Exchange(Engine(replace(settings, inject=False), client), request)
    return Exchange(engine, request)


@pytest.mark.parametrize(
    ("kind", "content_type", "leaves_alone"),
    [
        ("returning", "application/json", True),
        ("returning", None, True),
        ("returning", "text/plain; charset=utf-8", True),
        ("returning", "text/html", False),
        ("returning", " Text/HTML ; charset=utf-8", False),
        ("new-visitor", "application/json", False),
        ("login", "application/json", False),
        ("consent-mode", "application/json", False),
        ("no-snippet", "text/html", True),
    ],
    ids=[
        "returning-json",
        "returning-no-content-type",
        "returning-text",
        "returning-page",
        "returning-page-spelled-otherwise",
        "new-visitor-writes-a-cookie",
        "login-sends-a-link",
        "consent-mode-may-write-its-cookie",
        "no-snippet-configured",
    ],
)
def test_only_a_response_with_nothing_to_add_is_left_alone_before_its_headers_are_read(
    engine: Engine,
    settings: Settings,
    client: Client,
    kind: str,
    content_type: str | None,
    leaves_alone: bool,
) -> None:
    exchange = exchange_of(kind, engine, settings, client)
    assert exchange.leaves_alone(content_type) is leaves_alone


@pytest.mark.parametrize(
    "kind", ["returning", "new-visitor", "login", "consent-mode", "no-snippet"]
)
@hypothesis_settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "POST", "HEAD"]),
    status=st.sampled_from([200, 204, 302, 404, 500]),
    content_types=st.lists(
        st.sampled_from(
            ["text/html", "TEXT/HTML; charset=utf-8", " Text/Html ;x", "application/json", "text"]
        )
        | st.text(max_size=20),
        max_size=2,
    ),
    others=st.lists(
        st.sampled_from(
            [
                ("Content-Length", "12"),
                ("Content-Encoding", "gzip"),
                ("Cache-Control", "public"),
                ("Content-Disposition", "attachment"),
            ]
        ),
        max_size=2,
    ),
)
def test_a_response_left_alone_is_one_respond_would_not_touch(
    engine: Engine,
    settings: Settings,
    client: Client,
    kind: str,
    method: str,
    status: int,
    content_types: list[str],
    others: list[tuple[str, str]],
) -> None:
    exchange = exchange_of(kind, engine, settings, client, method)
    headers = [*others, *(("Content-Type", value) for value in content_types)]
    if exchange.leaves_alone(content_types[-1] if content_types else None):
        assert exchange.respond(status, headers) == UNTOUCHED


def test_an_identity_that_cannot_be_resolved_is_not_left_alone_and_respond_logs_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(self: Exchange) -> None:
        raise MemoryError("cannot allocate")

    monkeypatch.setattr(Exchange, "_resolve", fail)
    exchange = Exchange(engine, returning())

    assert exchange.leaves_alone("application/json") is False
    assert exchange.respond(200, JSON) == UNTOUCHED
    assert "finishing the response failed" in caplog.text


def test_the_cookie_written_carries_the_resolved_identity(engine: Engine) -> None:
    exchange = Exchange(engine, REQUEST, report="kim")

    [cookie] = identity_cookies(exchange.respond(200, JSON))

    state = read_cookie(cookie)
    assert state.anonymous_id == exchange.identity.anonymous_id
    assert state.user_hash == engine.codec.user_hash("kim")
    assert not state.linked, "nothing to link on a first visit"


def test_the_pages_snippet_names_the_identity_at_response_start_and_its_length_counts_it(
    engine: Engine,
) -> None:
    exchange = Exchange(engine, returning())
    exchange.report("kim")

    body, head = page_through(exchange.respond(200, HTML))

    assert snippet_options(body)["identity"] == {
        "anonymous": exchange.identity.anonymous_id,
        "user": "kim",
        "signedIn": True,
    }
    assert ("Content-Length", str(len(body))) in head


def test_the_login_link_leaves_when_the_response_starts_and_once_however_often_it_is_planned(
    engine: Engine, client: Client, sink: Sink
) -> None:
    anonymous = str(uuid.uuid4())
    exchange = Exchange(engine, returning(anonymous), report="kim")
    assert exchange.resolution.link == Link("kim", anonymous)
    assert len(engine.links) == 0, "resolving sends nothing"

    first = exchange.respond(200, JSON)
    again = exchange.respond(500, JSON)  # a WSGI error page after a failed response
    client.flush()

    assert again.headers == first.headers
    [alias] = sink.wait_for(event=ALIAS, count=1)
    assert (alias["distinct_id"], alias["properties"]["alias"]) == ("kim", anonymous)
    assert len(sink.events(ALIAS)) == 1


@pytest.mark.parametrize(
    ("url_path", "url"),
    [("", "http://shop.example/cart"), ("/shop/cart", "http://shop.example/shop/cart")],
    ids=["at-the-root", "below-a-mount-point"],
)
def test_the_events_url_is_the_whole_path_and_the_request_path_the_routed_one(
    engine: Engine, url_path: str, url: str
) -> None:
    request = REQUEST._replace(path="/cart", url_path=url_path, host="shop.example")

    _, properties = Exchange(engine, request).event_context()

    assert properties["$current_url"] == url
    assert properties["$request_path"] == "/cart"


# -- the browser's own anonymous id --------------------------------------------------

BROWSER = "0193a6b2-7c1e-7a1b-9c2d-3e4f5a6b7c8d"
OTHER = "0193a6b3-0000-7000-8000-000000000002"


def posthog_js_cookie(distinct_id: str, user_state: str = "anonymous") -> str:
    """posthog-js's persistence cookie for the test project (encodeURIComponent(JSON))."""
    return persistence_cookie(distinct_id=distinct_id, **{"$user_state": user_state})


def test_without_our_cookie_the_request_runs_on_the_headers_id(engine: Engine) -> None:
    exchange = Exchange(engine, REQUEST._replace(distinct_header=BROWSER))
    assert exchange.identity.anonymous_id == BROWSER
    (value,) = identity_cookies(exchange.respond(200, JSON))
    assert read_cookie(value).anonymous_id == BROWSER, "signed into our cookie as if minted"


def test_without_the_header_the_request_runs_on_posthog_js_cookies_id(engine: Engine) -> None:
    request = REQUEST._replace(cookie_header=posthog_js_cookie(BROWSER))
    assert Exchange(engine, request).identity.anonymous_id == BROWSER


def test_the_header_wins_over_posthog_js_cookie(engine: Engine) -> None:
    request = REQUEST._replace(distinct_header=OTHER, cookie_header=posthog_js_cookie(BROWSER))
    assert Exchange(engine, request).identity.anonymous_id == OTHER


def test_posthog_js_cookie_of_an_identified_browser_offers_nothing(engine: Engine) -> None:
    request = REQUEST._replace(cookie_header=posthog_js_cookie(BROWSER, "identified"))
    assert Exchange(engine, request).identity.anonymous_id != BROWSER


def test_the_header_of_an_identified_browser_is_not_adopted(engine: Engine) -> None:
    # posthog-js on a known user sends that user's id, here a UUIDv7 (apps keying users by one).
    cookie = posthog_js_cookie(BROWSER, "identified")
    exchange = Exchange(engine, REQUEST._replace(distinct_header=BROWSER, cookie_header=cookie))
    assert exchange.identity.anonymous_id != BROWSER
    assert uuid.UUID(exchange.identity.anonymous_id).version == 4, "minted"


def test_the_header_of_an_identified_browser_is_not_linked_into_a_login(
    engine: Engine, sink: Sink
) -> None:
    # Another user signs in on a browser posthog-js still has on its last user:
    # that user's id is never linked into the new one (two known users never merge).
    cookie = posthog_js_cookie(OTHER, "identified")
    request = REQUEST._replace(distinct_header=OTHER, cookie_header=cookie)
    exchange = Exchange(engine, request, "kim")
    assert exchange.identity.anonymous_id != OTHER
    exchange.respond(200, JSON)
    Exchange(engine, REQUEST._replace(distinct_header=BROWSER), "lee").respond(200, JSON)
    engine.client.flush()  # type: ignore[union-attr]
    aliases = sink.wait_for(event="$create_alias", count=1)
    assert [(a["distinct_id"], a["properties"]["alias"]) for a in aliases] == [("lee", BROWSER)]


def test_a_forged_header_that_is_not_a_uuidv7_is_ignored(engine: Engine) -> None:
    exchange = Exchange(engine, REQUEST._replace(distinct_header="someone-else"))
    assert exchange.identity.anonymous_id != "someone-else"
    assert uuid.UUID(exchange.identity.anonymous_id).version == 4, "minted as before"


def test_a_valid_cookie_wins_over_the_header(engine: Engine) -> None:
    request = returning("6a3d1a8e-2b7c-4f2e-9d7b-1c0e5f4a3b21")._replace(distinct_header=BROWSER)
    exchange = Exchange(engine, request)
    assert exchange.identity.anonymous_id == "6a3d1a8e-2b7c-4f2e-9d7b-1c0e5f4a3b21"
    assert identity_cookies(exchange.respond(200, JSON)) == []


def test_a_reported_user_wins_over_the_header(engine: Engine, sink: Sink) -> None:
    exchange = Exchange(engine, REQUEST._replace(distinct_header=BROWSER), "kim")
    assert exchange.identity.distinct_id == "kim"
    exchange.respond(200, JSON)
    engine.client.flush()  # type: ignore[union-attr]
    (alias,) = sink.wait_for(event="$create_alias", count=1)
    assert (alias["distinct_id"], alias["properties"]["alias"]) == ("kim", BROWSER)


def test_adoption_off_mints_whatever_the_browser_offers(settings: Settings, client: Client) -> None:
    engine = Engine(replace(settings, adopt_browser_id=False), client)
    request = REQUEST._replace(distinct_header=BROWSER, cookie_header=posthog_js_cookie(BROWSER))
    assert Exchange(engine, request).identity.anonymous_id != BROWSER


def test_a_logout_in_the_request_never_takes_the_user_who_left(engine: Engine) -> None:
    # An app whose user ids are UUIDv7: the SPA identified the user, so its header is theirs.
    exchange = Exchange(engine, REQUEST._replace(distinct_header=BROWSER), BROWSER)
    assert exchange.identity.distinct_id == BROWSER
    exchange.set_explicit(NOBODY)  # forget_user()
    assert exchange.identity.anonymous_id != BROWSER
    (value,) = identity_cookies(exchange.respond(200, JSON))
    assert read_cookie(value).awaiting is not None, "the cookie awaits the browser's next id"


def test_the_user_source_stopping_to_report_is_a_logout_too(engine: Engine) -> None:
    exchange = Exchange(engine, REQUEST._replace(distinct_header=BROWSER), BROWSER)
    exchange.report(NOBODY)
    assert exchange.identity.anonymous_id != BROWSER


@hypothesis_settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=st.text(st.characters(max_codepoint=255), max_size=60)
    | st.sampled_from([BROWSER, BROWSER.upper(), "alice", ""]),
    cookie=st.text(max_size=120)
    | st.sampled_from([posthog_js_cookie(OTHER)[len(PERSISTENCE) + 1 :]]),
)
def test_no_header_or_cookie_value_raises_and_only_a_uuidv7_is_taken(
    engine: Engine, header: str, cookie: str
) -> None:
    request = REQUEST._replace(distinct_header=header, cookie_header=f"{PERSISTENCE}={cookie}")
    exchange = Exchange(engine, request)
    anonymous_id = exchange.identity.anonymous_id
    offered = header or distinct_id_from_cookie(request.cookie_header, PERSISTENCE)
    if identified_in_cookie(request.cookie_header, PERSISTENCE):
        offered = None  # posthog-js on a known user offers nothing, its header included
    if anonymous_id != browser_id(offered):
        assert uuid.UUID(anonymous_id).version == 4, "minted"
    exchange.respond(200, JSON)
