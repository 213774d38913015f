"""Server events join the browser's session and carry the request's properties, through
both adapters to the sink."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from posthog_identity import Settings
from posthog_identity.signing import CookieCodec, CookieState
from posthog_identity.testing import Sink
from tests.helpers.drivers import Driver, driver_for, make_site
from tests.helpers.posthog_js import PERSISTENCE, SESSION, posthog_js_cookie
from tests.helpers.project import SECRET

WINDOW = "0193a6b2-7c1e-7a1b-9c2d-000000000001"


# -- through both adapters, to the sink -----------------------------------------


def returning(site: Driver) -> str:
    """Give the site's driver a returning visitor's cookie; return its anonymous id."""
    anonymous_id = str(uuid.uuid4())
    site.cookie = CookieCodec((SECRET,)).dumps(CookieState(anonymous_id, issued_at=2**31))
    return anonymous_id


def home_event(sink: Sink, anonymous_id: str) -> dict[str, Any]:
    [event] = sink.wait_for(event="Home Viewed", count=1)
    assert event["distinct_id"] == anonymous_id
    return event["properties"]  # type: ignore[no-any-return]


def visit(site: Driver, headers: dict[str, str], cookies: str = "") -> None:
    jar = f"ph_identity={site.cookie}" + (f"; {cookies}" if cookies else "")
    assert site.get("/", cookie=jar, headers=headers).status == 200


def test_a_server_event_carries_the_session_and_window_of_posthog_js_headers(
    site: Driver, sink: Sink
) -> None:
    anonymous_id = returning(site)
    visit(site, {"X-POSTHOG-SESSION-ID": SESSION, "X-POSTHOG-WINDOW-ID": WINDOW})
    properties = home_event(sink, anonymous_id)
    assert (properties["$session_id"], properties["$window_id"]) == (SESSION, WINDOW)


def test_without_headers_the_session_comes_from_posthog_js_cookie(site: Driver, sink: Sink) -> None:
    anonymous_id = returning(site)
    visit(site, {}, posthog_js_cookie())
    properties = home_event(sink, anonymous_id)
    assert properties["$session_id"] == SESSION
    assert "$window_id" not in properties


def test_an_invalid_session_header_falls_back_to_the_cookie(site: Driver, sink: Sink) -> None:
    anonymous_id = returning(site)
    other = "0193a6b2-7c1e-7a1b-9c2d-0000000000aa"
    visit(site, {"X-POSTHOG-SESSION-ID": "attacker-session"}, posthog_js_cookie(other))
    assert home_event(sink, anonymous_id)["$session_id"] == other


def test_hostile_session_values_never_reach_an_event(site: Driver, sink: Sink) -> None:
    anonymous_id = returning(site)
    visit(
        site,
        {"X-POSTHOG-SESSION-ID": "x" * 10_000, "X-POSTHOG-WINDOW-ID": "[1,2]"},
        PERSISTENCE + "=" + quote('{"$sesid":{"a":1}}'),
    )
    properties = home_event(sink, anonymous_id)
    assert "$session_id" not in properties
    assert "$window_id" not in properties


def test_a_server_event_carries_the_request_properties(site: Driver, sink: Sink) -> None:
    anonymous_id = returning(site)
    visit(site, {"User-Agent": "Mozilla/5.0 (test)", "Host": "shop.example"})
    properties = home_event(sink, anonymous_id)
    assert properties["$current_url"] == "http://shop.example/"
    assert properties["$request_method"] == "GET"
    assert properties["$request_path"] == "/"
    assert properties["$user_agent"] == "Mozilla/5.0 (test)"
    assert properties["$ip"] == "127.0.0.1"


def test_forwarded_for_counts_only_with_trusted_proxies(
    adapter: str, settings: Settings, client: Any, sink: Sink
) -> None:
    site = driver_for(adapter, make_site(adapter, replace(settings, trusted_proxies=1), client))
    anonymous_id = returning(site)
    visit(site, {"X-Forwarded-For": "6.6.6.6, 203.0.113.9"})
    assert home_event(sink, anonymous_id)["$ip"] == "203.0.113.9"


def test_an_events_own_properties_win_over_the_requests(site: Driver, sink: Sink) -> None:
    returning(site)
    jar = f"ph_identity={site.cookie}"
    site.get("/own-properties", cookie=jar, headers={"X-POSTHOG-SESSION-ID": SESSION})
    [event] = sink.wait_for(event="Own Properties", count=1)
    assert event["properties"]["$current_url"] == "https://app.example/mine"
    assert event["properties"]["$session_id"] == "app-session"
    assert event["properties"]["$request_path"] == "/own-properties"


def test_without_consent_nothing_of_the_browser_is_read_or_sent(
    adapter: str, settings: Settings, client: Any, sink: Sink
) -> None:
    site = driver_for(adapter, make_site(adapter, replace(settings, consent="opt-in"), client))
    headers = {"X-POSTHOG-SESSION-ID": SESSION, "User-Agent": "Mozilla/5.0 (test)"}
    site.get("/", cookie=posthog_js_cookie(), headers=headers)
    [event] = sink.wait_for(event="Home Viewed", count=1)
    for name in ("$session_id", "$window_id", "$current_url", "$user_agent", "$ip"):
        assert name not in event["properties"], name
