"""Session: the session id read from posthog-js's persistence cookie, whatever it holds;
the cookie's name; the client address behind trusted proxies."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from posthog_identity.session import (
    client_ip,
    distinct_id_from_cookie,
    identified_in_cookie,
    persistence_cookie,
    session_from_cookie,
    valid_uuid,
)
from tests.helpers.posthog_js import PERSISTENCE, SESSION, posthog_js_cookie

# -- reading the session, pure ------------------------------------------------


def test_the_session_id_is_read_from_posthog_js_persistence_cookie() -> None:
    header = f"other=1; {posthog_js_cookie()}; ph_identity=x"
    assert session_from_cookie(header, PERSISTENCE) == SESSION


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("not-json", id="not-json"),
        pytest.param(quote('{"$sesid":"' + SESSION + '"}'), id="sesid-not-a-list"),
        pytest.param(quote('{"$sesid":[1,"not-a-uuid",2]}'), id="not-a-uuid"),
        pytest.param(quote('["$sesid",1,"' + SESSION + '"]'), id="json-list"),
        pytest.param("x" * 10_000 + quote(f'"$sesid":[1,"{SESSION}"'), id="10KB"),
        pytest.param("\udcff\udcfe", id="non-utf8"),
    ],
)
def test_a_hostile_persistence_cookie_means_no_session(value: str) -> None:
    assert session_from_cookie(f"{PERSISTENCE}={value}", PERSISTENCE) is None


@given(st.text(max_size=300))
def test_no_persistence_cookie_value_raises(value: str) -> None:
    found = session_from_cookie(f"{PERSISTENCE}={value}", PERSISTENCE)
    assert found is None or valid_uuid(found) == found


# -- posthog-js's own distinct id, from the same cookie ---------------------------

BROWSER = "0193a6b2-0000-7000-8000-000000000000"  # the helper cookie's distinct_id


def test_the_distinct_id_is_read_from_posthog_js_persistence_cookie() -> None:
    header = f"other=1; {posthog_js_cookie()}; ph_identity=x"
    assert distinct_id_from_cookie(header, PERSISTENCE) == BROWSER


def test_the_distinct_id_is_read_undecoded_too() -> None:
    header = f'{PERSISTENCE}={{"$device_id":"x","distinct_id":"{BROWSER}"}}'
    assert distinct_id_from_cookie(header, PERSISTENCE) == BROWSER


def test_an_identified_browsers_distinct_id_is_a_users_and_is_not_offered() -> None:
    header = posthog_js_cookie(distinct_id=BROWSER, **{"$user_state": "identified"})
    assert distinct_id_from_cookie(header, PERSISTENCE) is None
    anonymous = posthog_js_cookie(distinct_id=BROWSER, **{"$user_state": "anonymous"})
    assert distinct_id_from_cookie(anonymous, PERSISTENCE) == BROWSER


@pytest.mark.parametrize(
    ("cookie", "identified"),
    [
        pytest.param(posthog_js_cookie(**{"$user_state": "identified"}), True, id="identified"),
        pytest.param(
            f'{PERSISTENCE}={{"distinct_id":"alice","$user_state":"identified"}}',
            True,
            id="identified-undecoded",
        ),
        pytest.param(posthog_js_cookie(**{"$user_state": "anonymous"}), False, id="anonymous"),
        pytest.param(posthog_js_cookie(), False, id="no-user-state"),
        pytest.param("other=" + quote('{"$user_state":"identified"}'), False, id="another-cookie"),
        pytest.param("", False, id="no-cookie"),
    ],
)
def test_posthog_js_cookie_says_whether_it_identified_a_user(cookie: str, identified: bool) -> None:
    assert identified_in_cookie(f"x=1; {cookie}", PERSISTENCE) is identified


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(quote('{"distinct_id":"alice"}'), id="a-name"),
        pytest.param(quote('{"$anon_distinct_id":"' + BROWSER + '"}'), id="another-key"),
        pytest.param(quote('{"distinct_id":["' + BROWSER + '"]}'), id="not-a-string"),
        pytest.param("x" * 10_000 + quote(f'"distinct_id":"{BROWSER}"'), id="10KB"),
        pytest.param("\udcff\udcfe", id="non-utf8"),
        pytest.param("", id="empty"),
    ],
)
def test_a_hostile_persistence_cookie_offers_no_distinct_id(value: str) -> None:
    assert distinct_id_from_cookie(f"{PERSISTENCE}={value}", PERSISTENCE) is None


def test_without_posthog_js_cookie_no_distinct_id_is_offered() -> None:
    assert distinct_id_from_cookie("ph_identity=x; other=1", PERSISTENCE) is None


@given(st.text(max_size=300))
def test_no_persistence_cookie_value_raises_when_its_distinct_id_is_read(value: str) -> None:
    found = distinct_id_from_cookie(f"{PERSISTENCE}={value}", PERSISTENCE)
    assert found is None or valid_uuid(found) == found


def test_the_persistence_cookie_is_named_as_posthog_js_names_it() -> None:
    assert persistence_cookie("phc_a+b/c=", {}) == "ph_phc_aPLbSLcEQ_posthog"
    assert persistence_cookie("phc_x", {"persistence_name": "mine"}) == "ph_mine"


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (SESSION, True),
        (SESSION.upper(), True),
        (SESSION[:-1], False),
        (SESSION + "0", False),
        ("attacker-session", False),
        ("", False),
    ],
)
def test_only_a_uuid_is_a_session_id(value: str, valid: bool) -> None:
    assert (valid_uuid(value) is not None) is valid


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        pytest.param("10.0.0.1", "", 0, "10.0.0.1", id="peer"),
        pytest.param("10.0.0.1", "6.6.6.6", 0, "10.0.0.1", id="untrusted-header-ignored"),
        pytest.param("10.0.0.1", "1.2.3.4", 1, "1.2.3.4", id="one-proxy"),
        pytest.param("10.0.0.1", "6.6.6.6, 1.2.3.4", 1, "1.2.3.4", id="spoofed-hop-ignored"),
        pytest.param("10.0.0.1", "1.2.3.4, 10.0.0.2", 2, "1.2.3.4", id="two-proxies"),
        pytest.param("10.0.0.1", "1.2.3.4", 2, "10.0.0.1", id="fewer-hops-than-proxies"),
    ],
)
def test_the_client_address_counts_trusted_proxies_as_proxyfix_does(
    peer: str, forwarded: str, trusted: int, expected: str
) -> None:
    assert client_ip(peer, forwarded, trusted) == expected
