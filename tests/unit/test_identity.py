"""The identity core: the transition table, row by row, plus properties."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posthog_identity.identity import (
    NOBODY,
    NOTHING,
    REISSUE_AFTER,
    Identity,
    InvalidUserId,
    Link,
    Report,
    Resolution,
    Transition,
    coerce_user_id,
    resolve,
)
from posthog_identity.signing import CookieCodec, CookieState, Verified

CODEC = CookieCodec(("new-secret", "old-secret"))
NOW = 1_800_000_000
MAX_AGE = 31_536_000
A = "00000000-0000-4000-8000-00000000000a"
B = "00000000-0000-4000-8000-00000000000b"


def run(
    cookie: CookieState | None,
    report: Report,
    *,
    key_index: int = 0,
    now: int = NOW,
    reset_on_logout: bool = True,
) -> Resolution:
    verified = None if cookie is None else Verified(cookie, key_index)
    return resolve(
        verified,
        report,
        now=now,
        user_hash=CODEC.user_hash,
        max_age=MAX_AGE,
        reset_on_logout=reset_on_logout,
        new_id=lambda: B,
    )


def anon(linked: bool = False, issued_at: int = NOW - 60) -> CookieState:
    return CookieState(A, None, linked, issued_at)


def known(user: str, linked: bool = True, issued_at: int = NOW - 60, key: int = 0) -> CookieState:
    return CookieState(A, CODEC.user_hash(user, key), linked, issued_at)


# -- row 1 and 2: no usable cookie -------------------------------------------------


@pytest.mark.parametrize("report", [NOBODY, NOTHING], ids=["nobody", "nothing"])
def test_no_cookie_and_no_user_mints_an_anonymous_id(report: Report) -> None:
    result = run(None, report)
    assert result.transition is Transition.NEW_VISITOR
    assert result.identity == Identity(B)
    assert result.identity.distinct_id == B
    assert not result.identity.is_identified
    assert result.cookie == CookieState(B, None, False, NOW)
    assert result.link is None


def test_no_cookie_with_a_user_mints_an_id_for_them_without_a_link() -> None:
    result = run(None, "u1")
    assert result.transition is Transition.NEW_VISITOR
    assert result.identity == Identity(B, "u1", True)
    assert result.identity.distinct_id == "u1"
    assert result.cookie == CookieState(B, CODEC.user_hash("u1"), False, NOW)
    assert result.link is None


@pytest.mark.parametrize("report", [NOBODY, NOTHING, "u1"], ids=["nobody", "nothing", "user"])
def test_an_expired_cookie_counts_as_no_cookie(report: Report) -> None:
    result = run(known("u1", issued_at=NOW - MAX_AGE), report)
    assert result.transition is Transition.NEW_VISITOR
    assert result.identity.anonymous_id == B
    assert result.link is None


# -- row 3: anonymous cookie, nobody -----------------------------------------------


@pytest.mark.parametrize("report", [NOBODY, NOTHING], ids=["nobody", "nothing"])
@pytest.mark.parametrize("linked", [False, True], ids=["fresh", "linked"])
def test_anonymous_cookie_without_a_user_changes_nothing(report: Report, linked: bool) -> None:
    result = run(anon(linked), report)
    assert result == Resolution(Identity(A), Transition.NONE, None, None)


# -- row 4: login ------------------------------------------------------------------


def test_login_links_the_anonymous_id_into_the_user() -> None:
    result = run(anon(), "u1")
    assert result.transition is Transition.LOGIN
    assert result.link == Link(user_id="u1", anonymous_id=A)
    assert result.identity == Identity(A, "u1", True)
    assert result.cookie == CookieState(A, CODEC.user_hash("u1"), True, NOW)


def test_an_already_linked_anonymous_id_is_never_linked_again() -> None:
    result = run(anon(linked=True), "u2")
    assert result.transition is Transition.LOGIN
    assert result.link is None
    assert result.identity == Identity(A, "u2", True)
    assert result.cookie == CookieState(A, CODEC.user_hash("u2"), True, NOW)


# -- row 5: same user --------------------------------------------------------------


def test_same_user_changes_nothing() -> None:
    result = run(known("u1"), "u1")
    assert result == Resolution(Identity(A, "u1", True), Transition.NONE, None, None)


def test_same_user_on_a_cookie_minted_for_them_is_not_linked() -> None:
    assert run(known("u1", linked=False), "u1").link is None


def test_reporting_nothing_keeps_the_remembered_user() -> None:
    result = run(known("u1"), NOTHING)
    assert result == Resolution(Identity(A, None, True), Transition.NONE, None, None)
    assert result.identity.signed_in
    assert not result.identity.is_identified


# -- row 6: logout -----------------------------------------------------------------


def test_logout_mints_a_new_anonymous_id() -> None:
    result = run(known("u1"), NOBODY)
    assert result.transition is Transition.LOGOUT
    assert result.identity == Identity(B)
    assert result.cookie == CookieState(B, None, False, NOW)
    assert result.link is None


def test_logout_without_reset_keeps_the_id_marked_linked() -> None:
    result = run(known("u1", linked=False), NOBODY, reset_on_logout=False)
    assert result.transition is Transition.LOGOUT
    assert result.identity == Identity(A)
    assert result.cookie == CookieState(A, None, True, NOW)
    assert result.link is None


def test_without_reset_the_next_user_is_never_linked_to_the_old_id() -> None:
    after_logout = run(known("u1"), NOBODY, reset_on_logout=False).cookie
    assert after_logout is not None
    assert run(after_logout, "u2").link is None


# -- row 7: switch -----------------------------------------------------------------


@pytest.mark.parametrize("reset_on_logout", [True, False], ids=["reset", "no-reset"])
def test_switch_mints_a_new_id_and_never_links_two_users(reset_on_logout: bool) -> None:
    result = run(known("u1"), "u2", reset_on_logout=reset_on_logout)
    assert result.transition is Transition.SWITCH
    assert result.link is None
    assert result.identity == Identity(B, "u2", True)
    assert result.cookie == CookieState(B, CODEC.user_hash("u2"), False, NOW)


# -- re-issue: rolling expiry and key rotation ------------------------------------


@pytest.mark.parametrize(
    ("cookie", "report"),
    [(anon(), NOBODY), (anon(), NOTHING), (known("u1"), "u1"), (known("u1"), NOTHING)],
    ids=["anon-nobody", "anon-nothing", "user-same", "user-nothing"],
)
def test_a_cookie_older_than_a_day_is_reissued_unchanged(
    cookie: CookieState, report: Report
) -> None:
    old = replace(cookie, issued_at=NOW - REISSUE_AFTER)
    result = run(old, report)
    assert result.transition is Transition.NONE
    assert result.cookie == replace(cookie, issued_at=NOW)
    assert result.link is None


def test_a_cookie_younger_than_a_day_is_not_reissued() -> None:
    assert run(anon(issued_at=NOW - REISSUE_AFTER + 1), NOBODY).cookie is None


def test_an_anonymous_cookie_signed_by_an_older_secret_is_reissued() -> None:
    result = run(anon(), NOTHING, key_index=1)
    assert result.cookie == replace(anon(), issued_at=NOW)


def test_a_user_cookie_signed_by_an_older_secret_is_rekeyed_when_the_user_is_seen() -> None:
    result = run(known("u1", key=1), "u1", key_index=1)
    assert result.transition is Transition.NONE
    assert result.identity == Identity(A, "u1", True)
    assert result.cookie == CookieState(A, CODEC.user_hash("u1", 0), True, NOW)


def test_a_user_cookie_signed_by_an_older_secret_waits_when_nothing_is_reported() -> None:
    result = run(known("u1", key=1, issued_at=NOW - 2 * REISSUE_AFTER), NOTHING, key_index=1)
    assert result.cookie is None
    assert result.identity == Identity(A, None, True)


def test_an_older_secrets_user_hash_is_compared_with_that_secret() -> None:
    result = run(known("u1", key=1), "u2", key_index=1)
    assert result.transition is Transition.SWITCH


def test_new_ids_are_random_uuid4s_by_default() -> None:
    first = resolve(None, NOBODY, now=NOW, user_hash=CODEC.user_hash, max_age=MAX_AGE)
    second = resolve(None, NOBODY, now=NOW, user_hash=CODEC.user_hash, max_age=MAX_AGE)
    assert uuid.UUID(first.identity.anonymous_id).version == 4
    assert first.identity.anonymous_id != second.identity.anonymous_id


# -- user ids ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("u1", "u1"),
        (42, "42"),
        (0, "0"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (None, NOBODY),
    ],
    ids=["str", "int", "zero", "uuid", "none"],
)
def test_user_ids_are_strings(value: object, expected: Report) -> None:
    assert coerce_user_id(value) == expected


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("", "an empty string"),
        (True, "bool"),
        (1.5, "float"),
        (b"u1", "bytes"),
        (object(), "object"),
    ],
    ids=["empty", "bool", "float", "bytes", "object"],
)
def test_other_user_ids_are_invalid(value: object, kind: str) -> None:
    with pytest.raises(InvalidUserId) as info:
        coerce_user_id(value)
    assert info.value.kind == kind


# -- properties over sequences of requests -----------------------------------------

USERS = ["u1", "u2", "u3"]
reports = st.sampled_from([NOBODY, NOTHING, *USERS])
steps = st.tuples(
    reports,
    st.sampled_from(["keep", "keep", "keep", "drop", "tamper"]),
    st.integers(0, 3 * REISSUE_AFTER),
)


class Browser:
    """A cookie jar driving the resolver over many requests, recording links."""

    def __init__(self, reset_on_logout: bool) -> None:
        self.reset_on_logout = reset_on_logout
        self.value: str | None = None
        self.now = NOW
        self.fresh = self._ids()
        self.links: list[Link] = []

    @staticmethod
    def _ids() -> Iterator[str]:
        for n in itertools.count(1):
            yield str(uuid.UUID(int=n, version=4))

    def request(self, report: Report) -> Resolution:
        result = resolve(
            CODEC.loads(self.value),
            report,
            now=self.now,
            user_hash=CODEC.user_hash,
            max_age=MAX_AGE,
            reset_on_logout=self.reset_on_logout,
            new_id=lambda: next(self.fresh),
        )
        if result.cookie is not None:
            self.value = CODEC.dumps(result.cookie)
        if result.link is not None:
            self.links.append(result.link)
        return result


@settings(max_examples=300)
@given(st.lists(steps, max_size=40), st.booleans())
def test_links_only_join_a_fresh_anonymous_id_to_the_first_user_seen_after_it(
    sequence: list[tuple[Report, str, int]], reset_on_logout: bool
) -> None:
    browser = Browser(reset_on_logout)
    minted: set[str] = set()
    first_user: dict[str, str] = {}
    for report, jar, elapsed in sequence:
        browser.now += elapsed
        if jar == "drop":
            browser.value = None
        elif jar == "tamper" and browser.value:
            browser.value = browser.value[:-2] + "xx"
        before = CODEC.loads(browser.value)
        result = browser.request(report)
        identity = result.identity
        minted.add(identity.anonymous_id)
        if isinstance(report, str):
            first_user.setdefault(identity.anonymous_id, report)
            assert identity.distinct_id == report
        elif report is NOBODY:
            assert not identity.is_identified
        if result.link is not None:
            # only an id the cookie held anonymously, never linked before
            assert before is not None
            assert before.state.user_hash is None
            assert not before.state.linked
            assert result.link.anonymous_id == before.state.anonymous_id
    anonymous_ids = [link.anonymous_id for link in browser.links]
    assert len(anonymous_ids) == len(set(anonymous_ids)), "an anonymous id was linked twice"
    for link in browser.links:
        assert link.anonymous_id in minted
        assert link.user_id in USERS
        assert link.anonymous_id not in USERS, "two user ids were linked"
        assert first_user[link.anonymous_id] == link.user_id


@given(st.lists(reports, max_size=20), st.integers(0, REISSUE_AFTER - 1), st.booleans())
def test_reporting_nothing_never_changes_the_state(
    history: list[Report], elapsed: int, reset_on_logout: bool
) -> None:
    browser = Browser(reset_on_logout)
    for report in history:
        browser.request(report)
    before = browser.value
    browser.now += elapsed
    result = browser.request(NOTHING)
    if before is not None:
        assert result.cookie is None
        assert result.link is None
        assert browser.value == before
        assert result.transition is Transition.NONE


@given(st.lists(reports, min_size=1, max_size=20), st.booleans())
def test_a_known_user_is_never_bootstrapped_as_someone_else(
    history: list[Report], reset_on_logout: bool
) -> None:
    browser = Browser(reset_on_logout)
    for report in history:
        identity = browser.request(report).identity
        if isinstance(report, str):
            assert identity.user_id == report
        else:
            assert identity.user_id is None
