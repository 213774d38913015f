"""The identity core: the transition table, row by row, plus properties."""

from __future__ import annotations

import functools
import itertools
import operator
import uuid
from collections.abc import Iterator

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
    browser_id,
    coerce_user_id,
    new_anonymous_id,
    resolve,
)
from posthog_identity.signing import CookieCodec, CookieState, Verified

CODEC = CookieCodec(("new-secret", "old-secret"))
NOW = 1_800_000_000
MAX_AGE = 31_536_000
A = "00000000-0000-4000-8000-00000000000a"
B = "00000000-0000-4000-8000-00000000000b"


# posthog-js's own ids (UUIDv7, lower case, as its uuidv7() prints them).
X = "0193a6b2-7c1e-7a1b-9c2d-3e4f5a6b7c8d"
X2 = "0193a6b3-0000-7000-8000-000000000002"
#: A user id that is a UUIDv7 too (apps that key users by one).
UV7 = "0193a6b2-1111-7111-a111-111111111111"


def run(
    cookie: CookieState | None,
    report: Report,
    *,
    key_index: int = 0,
    now: int = NOW,
    reset_on_logout: bool = True,
    offered: str | None = None,
    adopt: bool = True,
    left: str | None = None,
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
        offered=(lambda: offered) if adopt else None,
        left=left,
        keys=2,
    )


def awaiting(user: str, anonymous_id: str, key: int = 0) -> bytes:
    """The hashes a logout leaves in the cookie: the user's and the linked anonymous id's."""
    return CODEC.user_hash(user, key) + CODEC.user_hash(anonymous_id, key)


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


def test_logout_mints_a_new_anonymous_id_awaiting_the_browsers_next_one() -> None:
    result = run(known("u1"), NOBODY)
    assert result.transition is Transition.LOGOUT
    assert result.identity == Identity(B)
    assert result.cookie == CookieState(B, None, False, NOW, awaiting("u1", A))
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
    old = cookie._replace(issued_at=NOW - REISSUE_AFTER)
    result = run(old, report)
    assert result.transition is Transition.NONE
    assert result.cookie == cookie._replace(issued_at=NOW)
    assert result.link is None


def test_a_cookie_younger_than_a_day_is_not_reissued() -> None:
    assert run(anon(issued_at=NOW - REISSUE_AFTER + 1), NOBODY).cookie is None


def test_an_anonymous_cookie_signed_by_an_older_secret_is_reissued() -> None:
    result = run(anon(), NOTHING, key_index=1)
    assert result.cookie == anon()._replace(issued_at=NOW)


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


def test_a_minted_id_is_a_uuid4_in_its_usual_text_with_every_other_bit_random() -> None:
    minted = [new_anonymous_id() for _ in range(256)]
    assert len(set(minted)) == len(minted)
    values = [uuid.UUID(text) for text in minted]
    for text, value in zip(minted, values, strict=True):
        assert str(value) == text
        assert value.version == 4
        assert value.variant == uuid.RFC_4122
    # The 122 random bits each take both values (a fixed bit would do so
    # 256 times running with probability 2**-255).
    random_bits = (2**128 - 1) & ~((0xF << 76) | (0x3 << 62))  # all but version, variant
    assert functools.reduce(operator.or_, (v.int for v in values)) & random_bits == random_bits
    assert functools.reduce(operator.and_, (v.int for v in values)) & random_bits == 0


# -- the browser's own anonymous id (posthog-js's, offered in a header or its cookie) --

NOT_BROWSER_IDS = [
    pytest.param("alice", id="a-user-id"),
    pytest.param("someone-else", id="someone-else"),
    pytest.param(str(uuid.UUID(int=7, version=4)), id="uuid4"),
    pytest.param(X.upper(), id="upper-case-v7"),
    pytest.param(X[:19] + "c" + X[20:], id="v7-wrong-variant"),
    pytest.param(X[:-1], id="truncated"),
    pytest.param(X + "0", id="one-too-long"),
    pytest.param("x" * 10_240, id="10KB"),
    pytest.param("0193a6b2-7c1e-7a1b-9c2d-3e4f5a6b7c8\u0434", id="non-ascii"),
    pytest.param("", id="empty"),
    pytest.param(None, id="none-offered"),
]


@pytest.mark.parametrize("report", [NOBODY, NOTHING], ids=["nobody", "nothing"])
def test_no_cookie_takes_the_browsers_own_anonymous_id(report: Report) -> None:
    result = run(None, report, offered=X)
    assert result.transition is Transition.ADOPT
    assert result.identity == Identity(X)
    assert result.cookie == CookieState(X, None, False, NOW), "signed in as if minted"
    assert result.link is None


@pytest.mark.parametrize("offered", NOT_BROWSER_IDS)
def test_no_cookie_and_an_offered_id_that_is_not_a_uuidv7_mints_one(offered: str | None) -> None:
    result = run(None, NOBODY, offered=offered)
    assert result.transition is Transition.NEW_VISITOR
    assert result.identity == Identity(B)
    assert result.cookie == CookieState(B, None, False, NOW)


def test_with_adoption_off_no_cookie_mints_whatever_the_browser_offers() -> None:
    result = run(None, NOBODY, offered=X, adopt=False)
    assert result.identity == Identity(B)
    assert result.transition is Transition.NEW_VISITOR


def test_no_cookie_and_a_user_links_the_browsers_id_into_the_user() -> None:
    result = run(None, "u1", offered=X)
    assert result.transition is Transition.LOGIN
    assert result.identity == Identity(X, "u1", True), "the reported user wins"
    assert result.link == Link(user_id="u1", anonymous_id=X)
    assert result.cookie == CookieState(X, CODEC.user_hash("u1"), True, NOW)


def test_no_cookie_and_a_browser_identified_as_the_user_links_nothing() -> None:
    # posthog.identify(user) in the SPA: its header carries the user id.
    result = run(None, UV7, offered=UV7)
    assert result.transition is Transition.NEW_VISITOR
    assert result.identity == Identity(B, UV7, True)
    assert result.link is None


@pytest.mark.parametrize("report", [NOBODY, NOTHING, "u1"], ids=["nobody", "nothing", "user"])
def test_a_valid_cookie_wins_over_the_browsers_id_which_is_not_even_read(report: Report) -> None:
    def never() -> str:
        raise AssertionError("a returning visitor's request reads no header")

    verified = Verified(anon(), 0)
    result = resolve(
        verified, report, now=NOW, user_hash=CODEC.user_hash, max_age=MAX_AGE, offered=never
    )
    assert result.identity.anonymous_id == A


def test_a_signed_in_cookie_wins_over_the_browsers_id() -> None:
    assert run(known("u1"), "u1", offered=X).identity == Identity(A, "u1", True)
    switched = run(known("u1"), "u2", offered=X)
    assert switched.transition is Transition.SWITCH
    assert switched.identity == Identity(B, "u2", True)
    assert switched.link is None, "two known users are never merged"


def test_an_expired_cookie_takes_the_browsers_id() -> None:
    result = run(anon(issued_at=NOW - MAX_AGE), NOBODY, offered=X)
    assert result.identity == Identity(X)


# -- logout: the next anonymous period is the browser's next id -------------------


def test_logout_takes_the_browsers_new_id_when_it_has_reset_already() -> None:
    result = run(known("u1"), NOBODY, offered=X2)
    assert result.transition is Transition.LOGOUT
    assert result.identity == Identity(X2)
    assert result.cookie == CookieState(X2, None, False, NOW)
    assert result.link is None


@pytest.mark.parametrize(
    ("cookie", "offered", "left"),
    [
        pytest.param(
            CookieState(X, CODEC.user_hash(UV7), True, NOW - 60), UV7, None, id="the-user"
        ),
        pytest.param(CookieState(X, CODEC.user_hash(UV7), True, NOW - 60), X, None, id="its-id"),
        pytest.param(CookieState(X, CODEC.user_hash("u1"), True, NOW - 60), UV7, UV7, id="left"),
    ],
)
def test_logout_never_takes_an_id_the_browser_had_while_signed_in(
    cookie: CookieState, offered: str, left: str | None
) -> None:
    result = run(cookie, NOBODY, offered=offered, left=left)
    assert result.transition is Transition.LOGOUT
    assert result.identity == Identity(B)
    assert result.cookie is not None
    assert result.cookie.anonymous_id == B
    assert result.cookie.awaiting is not None


def test_logout_remembers_the_user_who_left_by_the_hash_of_the_request_that_said_so() -> None:
    result = run(known("u1", key=1), NOBODY, key_index=1, left="u1")
    assert result.cookie == CookieState(B, None, False, NOW, awaiting("u1", A))


def test_a_logout_under_an_older_secret_never_takes_the_user_who_left_afterwards() -> None:
    # The user's hash stays the older secret's (the id is unknown, it cannot be
    # re-keyed) while the newest secret signs the cookie the logout writes.
    logout = run(known(UV7, key=1), NOBODY, key_index=1)
    assert logout.cookie is not None
    result = run(logout.cookie, NOBODY, offered=UV7)
    assert result == Resolution(Identity(B), Transition.NONE, None, None)


def test_logout_without_reset_ignores_the_browsers_id() -> None:
    result = run(known("u1", linked=False), NOBODY, reset_on_logout=False, offered=X2)
    assert result.cookie == CookieState(A, None, True, NOW)


@pytest.mark.parametrize(
    ("offered", "kept"), [(X, X), (None, B)], ids=["the-browsers-id", "a-minted-id"]
)
def test_a_logout_without_reset_in_a_request_without_our_cookie_keeps_its_id_marked_linked(
    offered: str | None, kept: str
) -> None:
    # The id the request had while it reported the user (taken or minted alike),
    # as a cookie's A is kept: no wait for the browser's next one.
    signed_in = run(None, "u1", reset_on_logout=False, offered=offered)
    result = run(None, NOBODY, reset_on_logout=False, offered=offered, left="u1")
    assert signed_in.identity.anonymous_id == kept
    assert result.transition is Transition.LOGOUT
    assert result.identity == Identity(kept)
    assert result.cookie == CookieState(kept, None, True, NOW)


def test_a_logout_in_a_request_without_our_cookie_awaits_the_browsers_next_id() -> None:
    result = run(None, NOBODY, offered=UV7, left=UV7)
    assert result.transition is Transition.LOGOUT
    assert result.identity == Identity(B)
    assert result.cookie == CookieState(B, None, False, NOW, awaiting(UV7, UV7))


def test_a_logout_in_a_request_without_our_cookie_takes_a_new_browser_id() -> None:
    result = run(None, NOBODY, offered=X2, left="u1")
    assert result.transition is Transition.LOGOUT
    assert result.identity == Identity(X2)
    assert result.cookie == CookieState(X2, None, False, NOW)


def after_logout(issued_at: int = NOW - 60) -> CookieState:
    """The cookie a logout of UV7 (whose browser had anonymous id X) leaves."""
    return CookieState(B, None, False, issued_at, awaiting(UV7, X))


@pytest.mark.parametrize("report", [NOBODY, NOTHING], ids=["nobody", "nothing"])
def test_a_cookie_awaiting_the_browsers_next_id_takes_it(report: Report) -> None:
    result = run(after_logout(), report, offered=X2)
    assert result.transition is Transition.ADOPT
    assert result.identity == Identity(X2)
    assert result.cookie == CookieState(X2, None, False, NOW)


@pytest.mark.parametrize(
    "offered", [pytest.param(UV7, id="the-user-who-left"), pytest.param(X, id="their-linked-id")]
)
def test_a_cookie_awaiting_the_browsers_next_id_never_takes_an_old_one(offered: str) -> None:
    result = run(after_logout(), NOBODY, offered=offered)
    assert result == Resolution(Identity(B), Transition.NONE, None, None)


@pytest.mark.parametrize("offered", NOT_BROWSER_IDS)
def test_a_cookie_awaiting_the_browsers_next_id_keeps_ours_meanwhile(offered: str | None) -> None:
    result = run(after_logout(), NOBODY, offered=offered)
    assert result == Resolution(Identity(B), Transition.NONE, None, None)


def test_a_browser_running_on_our_id_ends_the_wait() -> None:
    # A page bootstrapped posthog-js with the cookie's id: it now sends it back.
    result = run(after_logout(), NOBODY, offered=B)
    assert result.transition is Transition.NONE
    assert result.identity == Identity(B)
    assert result.cookie == CookieState(B, None, False, NOW)


def test_a_cookie_awaiting_the_browsers_next_id_is_reissued_still_awaiting() -> None:
    result = run(after_logout(NOW - REISSUE_AFTER), NOBODY)
    assert result.cookie == after_logout()._replace(issued_at=NOW)


def test_a_cookie_awaiting_under_an_older_secret_waits_as_it_is() -> None:
    result = run(after_logout(NOW - 2 * REISSUE_AFTER), NOBODY, key_index=1)
    assert result.cookie is None
    assert result.identity == Identity(B)


def test_login_after_logout_links_the_browsers_new_id() -> None:
    result = run(after_logout(), "u2", offered=X2)
    assert result.transition is Transition.LOGIN
    assert result.identity == Identity(X2, "u2", True)
    assert result.link == Link("u2", X2)
    assert result.cookie == CookieState(X2, CODEC.user_hash("u2"), True, NOW)


@pytest.mark.parametrize(
    "offered",
    [
        pytest.param(None, id="none"),
        pytest.param(UV7, id="the-user-who-left"),
        pytest.param(X, id="their-linked-id"),
    ],
)
def test_login_after_logout_without_a_new_browser_id_links_ours(offered: str | None) -> None:
    result = run(after_logout(), "u2", offered=offered)
    assert result.link == Link("u2", B), "never the user who left, nor their linked id"
    assert result.cookie == CookieState(B, CODEC.user_hash("u2"), True, NOW)


def test_login_after_logout_of_a_browser_identified_as_the_new_user_links_ours() -> None:
    # posthog.identify(user) ran before the login request: its header is the user's id.
    other = "0193a6b2-2222-7222-a222-222222222222"
    result = run(after_logout(), other, offered=other)
    assert result.link == Link(other, B)
    assert result.identity == Identity(B, other, True)


@given(st.text(max_size=80), st.sampled_from([NOBODY, NOTHING, "u1", UV7]), st.integers(0, 4))
def test_any_offered_value_never_raises_and_is_taken_only_as_a_uuidv7(
    offered: str, report: Report, cookie_kind: int
) -> None:
    cookies = [None, anon(), known("u1"), known(UV7), after_logout()]
    result = run(cookies[cookie_kind], report, offered=offered, left="u1")
    anonymous_id = result.identity.anonymous_id
    assert anonymous_id in (A, B) or anonymous_id == browser_id(offered) == offered
    if isinstance(report, str):
        assert result.identity.user_id == report
    if result.link is not None:
        assert result.link.anonymous_id not in ("u1", UV7, report)


@given(st.text(max_size=40))
def test_only_posthog_js_shaped_ids_are_browser_ids(value: str) -> None:
    taken = browser_id(value)
    if taken is not None:
        assert uuid.UUID(taken).version == 7
        assert str(uuid.UUID(taken)) == taken


@pytest.mark.parametrize("value", [X, X2, UV7])
def test_a_uuidv7_is_a_browser_id(value: str) -> None:
    assert browser_id(value) == value


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


class SinglePageApp:
    """A single-page app's browser running posthog-js, calling an API through the resolver.

    posthog-js sends its distinct id on every call: its own anonymous UUIDv7 until
    `identify`, the user's id after it, a new UUIDv7 after `reset`. The app behaves
    as posthog's docs ask: identify after login, reset after logout (before the
    next login, and only then), though calls may fall in between. `same_site` keeps our cookie;
    a cross-site app never gets it back.
    """

    def __init__(self, same_site: bool) -> None:
        self.same_site = same_site
        self.value: str | None = None
        self.ids = (
            str(uuid.UUID(int=(0x0193 << 112) | (7 << 76) | (2 << 62) | n))
            for n in itertools.count(1)
        )
        self.posthog_js = next(self.ids)
        self.fresh = True  #: posthog-js's id has not been linked to anyone yet
        self.user: str | None = None  #: who the API's session says is logged in
        self.reset_due = False
        self.minted = (str(uuid.UUID(int=n, version=4)) for n in itertools.count(1))
        self.links: list[Link] = []

    def call(self, report: Report, left: str | None = None) -> Resolution:
        result = resolve(
            CODEC.loads(self.value) if self.same_site else None,
            report,
            now=NOW,
            user_hash=CODEC.user_hash,
            max_age=MAX_AGE,
            new_id=lambda: next(self.minted),
            offered=lambda: self.posthog_js,
            left=left,
        )
        if result.cookie is not None:
            self.value = CODEC.dumps(result.cookie)
        if result.link is not None:
            self.links.append(result.link)
            if result.link.anonymous_id == self.posthog_js:
                self.fresh = False
        return result

    def act(self, action: str, user: str) -> Resolution | None:
        if action == "call":
            return self.call(self.user or NOBODY)
        if action == "login" and self.user is None and not self.reset_due:
            self.user = user
            return self.call(user)
        if action == "identify" and self.user is not None:
            self.posthog_js, self.fresh = self.user, False
        elif action == "logout" and self.user is not None:
            left, self.user, self.reset_due = self.user, None, True
            return self.call(NOBODY, left=left)
        elif action == "reset" and self.reset_due:
            self.posthog_js, self.fresh, self.reset_due = next(self.ids), True, False
        return None


SPA_USERS = [UV7, "0193a6b2-2222-7222-a222-222222222222", "u3"]


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["call", "call", "login", "identify", "logout", "reset"]),
            st.sampled_from(SPA_USERS),
        ),
        max_size=40,
    ),
    st.booleans(),
)
def test_a_single_page_apps_anonymous_calls_run_on_its_own_id_and_no_user_is_linked(
    actions: list[tuple[str, str]], same_site: bool
) -> None:
    app = SinglePageApp(same_site)
    for action, user in actions:
        fresh_before = app.fresh and app.posthog_js not in SPA_USERS
        result = app.act(action, user)
        if result is None:
            continue
        identity = result.identity
        if action == "call" and app.user is None and fresh_before:
            assert identity.distinct_id == app.posthog_js, "the browser's own anonymous id"
        if app.user is not None and action != "logout":
            assert identity.distinct_id == app.user
        if action == "logout" or (app.user is None and same_site):
            # (A cross-site call has no memory of who left: posthog-js's reset() decides.)
            assert identity.anonymous_id not in SPA_USERS, "never the user who just left"
    for link in app.links:
        assert link.anonymous_id not in SPA_USERS, "a user id was linked"
        assert link.user_id in SPA_USERS
