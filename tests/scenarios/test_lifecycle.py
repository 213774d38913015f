"""The identity lifecycle, one scenario table run through both adapters in-process."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from posthog_identity import current_identity
from tests.helpers.drivers import Driver, driver_for, make_site
from tests.helpers.project import API_KEY
from tests.helpers.wire import read_cookie

if TYPE_CHECKING:
    import posthog

    from posthog_identity.settings import Settings
    from posthog_identity.testing import Sink


def whoami(site: Driver, **kwargs: str) -> dict[str, object]:
    identity = json.loads(site.get("/whoami", **kwargs).body)["identity"]
    assert isinstance(identity, dict)
    return identity


def test_first_visit_gets_an_anonymous_cookie(site: Driver) -> None:
    reply = site.get("/")
    assert reply.status == 200
    assert len(reply.identity_cookies) == 1
    assert site.state.user_hash is None
    assert not site.state.linked


def test_return_visit_gets_no_set_cookie(site: Driver) -> None:
    site.get("/")
    reply = site.get("/")
    assert reply.headers_named("Set-Cookie") == []


def test_the_cookie_is_httponly_lax_host_only_with_path_and_max_age(site: Driver) -> None:
    header = site.get("/").header("Set-Cookie")
    assert header is not None
    attributes = {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}
    assert attributes == {"httponly", "path", "samesite", "max-age", "expires"}
    assert "Path=/" in header
    assert "SameSite=Lax" in header
    assert "Max-Age=31536000" in header


def test_secure_is_automatic_over_https(
    adapter: str, settings: Settings, client: posthog.Client
) -> None:
    https = driver_for(adapter, make_site(adapter, settings, client), scheme="https")
    http = driver_for(adapter, make_site(adapter, settings, client))
    assert "Secure" in (https.get("/").header("Set-Cookie") or "")
    assert "Secure" not in (http.get("/").header("Set-Cookie") or "")


def test_the_request_identity_is_the_cookies_anonymous_id(site: Driver) -> None:
    site.get("/")
    assert whoami(site) == {
        "distinct_id": site.state.anonymous_id,
        "anonymous_id": site.state.anonymous_id,
        "user_id": None,
        "is_identified": False,
    }


def test_login_sends_one_alias_keeping_the_user(site: Driver, sink: Sink) -> None:
    site.get("/")
    anonymous = site.state.anonymous_id
    reply = site.get("/login?user=alice")
    assert reply.status == 302
    assert len(reply.identity_cookies) == 1, "the redirect carries the cookie"
    (alias,) = sink.wait_for(event="$create_alias", count=1)
    assert alias["distinct_id"] == "alice"
    assert alias["properties"]["alias"] == anonymous
    assert "$process_person_profile" not in alias["properties"]
    assert alias["api_key"] == API_KEY
    assert site.state.anonymous_id == anonymous
    assert site.state.linked


def test_the_logged_in_user_is_the_distinct_id_afterwards(site: Driver) -> None:
    site.get("/")
    anonymous = site.state.anonymous_id
    site.get("/login?user=alice")
    assert whoami(site, user="alice") == {
        "distinct_id": "alice",
        "anonymous_id": anonymous,
        "user_id": "alice",
        "is_identified": True,
    }


def test_a_returning_user_costs_no_set_cookie_and_no_alias(site: Driver, sink: Sink) -> None:
    site.get("/")
    site.get("/login?user=alice")
    sink.wait_for(event="$create_alias", count=1)
    for _ in range(3):
        assert site.get("/", user="alice").headers_named("Set-Cookie") == []
    sink.wait_for(event="Home Viewed", count=4)
    assert len(sink.events("$create_alias")) == 1


def test_logout_mints_a_new_anonymous_id(site: Driver) -> None:
    site.get("/")
    site.get("/login?user=alice")
    before = site.state.anonymous_id
    reply = site.get("/logout", user="alice")
    assert reply.status == 302
    assert site.state.anonymous_id != before
    assert site.state.user_hash is None
    assert whoami(site)["distinct_id"] == site.state.anonymous_id


def test_a_user_who_stops_being_reported_is_logged_out(site: Driver) -> None:
    site.get("/")
    site.get("/", user="alice")
    before = site.state.anonymous_id
    site.get("/")  # the callback now reports nobody
    assert site.state.anonymous_id != before


def test_account_switch_sends_no_alias(site: Driver, sink: Sink) -> None:
    site.get("/")
    site.get("/login?user=alice")
    sink.wait_for(event="$create_alias", count=1)
    alice_anonymous = site.state.anonymous_id
    site.get("/", user="bob")
    assert site.state.anonymous_id != alice_anonymous
    site.get("/", user="bob")
    sink.wait_for(event="Home Viewed", count=2)
    assert [a["distinct_id"] for a in sink.events("$create_alias")] == ["alice"]


def test_a_tampered_cookie_gets_a_fresh_id_and_a_200(site: Driver) -> None:
    site.get("/")
    original = site.state.anonymous_id
    assert site.cookie is not None
    site.cookie = site.cookie[:-3] + "abc"
    reply = site.get("/")
    assert reply.status == 200
    assert len(reply.identity_cookies) == 1
    assert site.state.anonymous_id != original


@pytest.mark.parametrize(
    "cookie",
    ["ph_identity=", "ph_identity=garbage", "ph_identity", "=;;;", 'ph_identity="x\\y"'],
    ids=["empty", "garbage", "no-value", "junk", "quoted"],
)
def test_malformed_cookie_headers_mint_a_fresh_id(site: Driver, cookie: str) -> None:
    reply = site.get("/", cookie=cookie)
    assert reply.status == 200
    assert len(reply.identity_cookies) == 1


def test_the_first_valid_of_duplicate_cookies_wins(site: Driver) -> None:
    site.get("/")
    good = site.cookie or ""
    reply = site.get("/whoami", cookie=f"ph_identity=forged; ph_identity={good}")
    assert reply.identity_cookies == []
    assert json.loads(reply.body)["identity"]["anonymous_id"] == read_cookie(good).anonymous_id


def test_server_captures_carry_the_requests_distinct_id(site: Driver, sink: Sink) -> None:
    site.get("/")
    anonymous = site.state.anonymous_id
    site.get("/login?user=alice")
    site.get("/", user="alice")
    home = sink.wait_for(event="Home Viewed", count=2)
    (logged_in,) = sink.wait_for(event="Logged In", count=1)
    assert [e["distinct_id"] for e in home] == [anonymous, "alice"]
    assert logged_in["distinct_id"] == "alice", "identify_user moves later captures"


def test_anonymous_captures_are_personless_and_identified_ones_are_not(
    site: Driver, sink: Sink
) -> None:
    site.get("/")
    site.get("/login?user=alice")
    site.get("/", user="alice")
    anonymous, identified = sink.wait_for(event="Home Viewed", count=2)
    (logged_in,) = sink.wait_for(event="Logged In", count=1)
    assert anonymous["properties"]["$process_person_profile"] is False
    assert identified["properties"].get("$process_person_profile") is not False
    assert logged_in["properties"].get("$process_person_profile") is not False


def test_always_mode_processes_anonymous_persons(
    adapter: str, settings: Settings, client: posthog.Client, sink: Sink
) -> None:
    always = replace(settings, person_profiles="always")
    site = driver_for(adapter, make_site(adapter, always, client))
    site.get("/")
    (event,) = sink.wait_for(event="Home Viewed", count=1)
    assert "$process_person_profile" not in event["properties"]


@pytest.mark.usefixtures("module_posthog")
def test_module_level_captures_carry_the_distinct_id(site: Driver, sink: Sink) -> None:
    site.get("/module-capture")
    anonymous = site.state.anonymous_id
    site.get("/login?user=alice")
    site.get("/module-capture", user="alice")
    first, second = sink.wait_for(event="Module Event", count=2)
    assert first["distinct_id"] == anonymous
    assert first["properties"]["$process_person_profile"] is False
    assert second["distinct_id"] == "alice"


def test_captures_made_while_a_body_streams_carry_the_identity(site: Driver, sink: Sink) -> None:
    site.get("/")
    reply = site.get("/stream", user="alice")
    assert reply.body.startswith(b"first ")
    assert json.loads(reply.body[len(b"first ") :])["identity"]["user_id"] == "alice"
    (streamed,) = sink.wait_for(event="Streamed", count=1)
    assert streamed["distinct_id"] == "alice"


def test_shared_cacheable_responses_get_no_set_cookie(site: Driver) -> None:
    reply = site.get("/public")
    assert reply.status == 200
    assert reply.headers_named("Set-Cookie") == []


def test_there_is_no_identity_outside_a_request(site: Driver) -> None:
    site.get("/")
    assert current_identity() is None


def unreported(adapter: str, settings: Settings, client: posthog.Client) -> Driver:
    """The same site with no user source: every request reports nothing."""
    from posthog_identity.asgi import IdentityMiddleware as ASGI
    from posthog_identity.wsgi import IdentityMiddleware as WSGI
    from tests.sites import basic as apps

    if adapter == "wsgi":
        return driver_for(adapter, WSGI(apps.make_wsgi_app(client), settings, client=client))
    return driver_for(adapter, ASGI(apps.make_asgi_app(client), settings, client=client))


def test_an_unreported_request_of_a_linked_user_processes_their_person(
    site: Driver, adapter: str, settings: Settings, client: posthog.Client, sink: Sink
) -> None:
    site.get("/")
    site.get("/login?user=alice")  # links the anonymous id into alice
    later = unreported(adapter, settings, client)
    later.get("/", cookie=f"ph_identity={site.cookie}")
    home = sink.wait_for(event="Home Viewed", count=2)
    assert home[-1]["distinct_id"] == site.state.anonymous_id
    assert "$process_person_profile" not in home[-1]["properties"]


def test_an_unreported_request_of_a_never_linked_user_is_personless(
    site: Driver, adapter: str, settings: Settings, client: posthog.Client, sink: Sink
) -> None:
    site.get("/", user="alice")  # no cookie yet: a new id for alice, nothing linked
    assert site.state.user_hash is not None
    assert site.state.linked is False
    later = unreported(adapter, settings, client)
    later.get("/", cookie=f"ph_identity={site.cookie}")
    first, second = sink.wait_for(event="Home Viewed", count=2)
    assert first["distinct_id"] == "alice"
    # Its anonymous id is no one's person: processing it would create a stray one.
    assert second["distinct_id"] == site.state.anonymous_id
    assert second["properties"]["$process_person_profile"] is False
