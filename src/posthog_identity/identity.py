"""The identity core: (verified cookie, what the request reports) -> Resolution.

Pure code: no I/O, no framework, no clock and no randomness of its own (the
caller passes `now`, a `new_id` source and what the browser offers). The
transition table (first visit, login, logout, account switch, the browser's own
id taken; docs/identity.md), row by row, lives in `resolve`.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import hmac
import json
import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeAlias

from .signing import CookieState, Verified

__all__ = [
    "NOBODY",
    "NOTHING",
    "REISSUE_AFTER",
    "Absent",
    "Identity",
    "InvalidUserId",
    "Link",
    "Report",
    "Resolution",
    "Transition",
    "browser_id",
    "coerce_user_id",
    "new_anonymous_id",
    "resolve",
]

#: A returning visitor's cookie is re-issued once it is older than this, so
#: its expiry rolls forward for active visitors without a Set-Cookie per request.
REISSUE_AFTER = 86_400


class Absent(enum.Enum):
    """The two ways a request can report no user id."""

    NOTHING = "nothing"  #: nobody said anything: the cookie's state stands
    NOBODY = "nobody"  #: auth ran and nobody is logged in


NOTHING = Absent.NOTHING
NOBODY = Absent.NOBODY
#: What a request reports: a user id, NOBODY or NOTHING.
Report: TypeAlias = str | Absent

UserHasher: TypeAlias = Callable[[str, int], bytes]
"""(user id, index of the secret) -> short keyed hash, as `CookieCodec.user_hash`."""


class Transition(enum.Enum):
    NONE = "none"
    NEW_VISITOR = "new_visitor"
    LOGIN = "login"
    LOGOUT = "logout"
    SWITCH = "switch"
    ADOPT = "adopt"  #: an anonymous visitor on the browser's own id (posthog-js's)


class InvalidUserId(TypeError):
    """A user id that is not a non-empty str, int or UUID; `kind` says what it was."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(f"user id must be a non-empty str, int or UUID, got {kind}")


def coerce_user_id(value: object) -> Report:
    """Normalize what a `user_id` callback returned: None is NOBODY, ids become str.

    A callback may also return NOTHING (it cannot tell, e.g. outside a
    framework's request context) or NOBODY itself.
    """
    if value is None:
        return NOBODY
    if isinstance(value, Absent):
        return value
    if isinstance(value, str):
        if not value:
            raise InvalidUserId("an empty string")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return str(value)
        except ValueError:  # past Python's int-to-str digit limit
            raise InvalidUserId("an int too long to print") from None
    if isinstance(value, uuid.UUID):
        return str(value)
    raise InvalidUserId(type(value).__name__)


class FlagAccess(Protocol):
    """How an `Identity` reads its request's flags (implemented by the middleware)."""

    def values(self) -> Mapping[str, bool | str]: ...

    def payloads(self) -> Mapping[str, Any]: ...

    def expose(self, key: str, value: object) -> None: ...


@dataclass(frozen=True)
class Identity:
    """Who the current request is, for PostHog.

    `user_id` is ``None`` when the request is anonymous, and also when the
    request reported nothing while the cookie remembers a signed-in user (the
    cookie holds only a hash of that id): `signed_in` tells the two apart.

    `consented` is False when the visitor has not consented to tracking
    (POSTHOG_IDENTITY_CONSENT): the request then runs on a random id of its
    own, never stored and never linked to a user.
    """

    anonymous_id: str
    user_id: str | None = None
    signed_in: bool = False
    #: The request's flags, evaluated on first use (set by the middleware).
    flags: FlagAccess | None = field(default=None, compare=False, repr=False)
    consented: bool = True

    @property
    def feature_flags(self) -> Mapping[str, bool | str]:
        """Flag values for this request's distinct id: the ones the page bootstraps.

        Empty unless flag bootstrapping is on (POSTHOG_IDENTITY_BOOTSTRAP_FLAGS)
        and the flags could be evaluated in time. Reading them all reports no
        exposure; `feature_flag` does.
        """
        return {} if self.flags is None else self.flags.values()

    def feature_flag(self, key: str, default: bool | str | None = None) -> bool | str | None:
        """One flag's value (a variant or a bool), the one the browser is bootstrapped with.

        Reading a flag that exists sends `$feature_flag_called` once per request
        and key from the server (the exposure for experiments).
        """
        if self.flags is None:
            return default
        values = self.flags.values()
        if key not in values:
            return default
        self.flags.expose(key, values[key])
        return values[key]

    async def afeature_flag(self, key: str, default: bool | str | None = None) -> bool | str | None:
        """`feature_flag` for ``async def`` views: a remote evaluation runs in a
        worker thread, so the event loop keeps serving while it waits."""
        if self.flags is not None:
            await asyncio.to_thread(self.flags.values)  # evaluated once, then kept
        return self.feature_flag(key, default)

    async def afeature_flags(self) -> Mapping[str, bool | str]:
        """`feature_flags` for ``async def`` views, evaluated off the event loop."""
        return {} if self.flags is None else await asyncio.to_thread(self.flags.values)

    def feature_flag_payload(self, key: str) -> Any:
        """The payload of the flag's matched value, decoded from PostHog's JSON, or None."""
        raw = None if self.flags is None else self.flags.payloads().get(key)
        if not isinstance(raw, str):
            return raw
        try:
            return json.loads(raw)
        except ValueError:
            return raw  # as posthog-js's parsePayload does

    @property
    def distinct_id(self) -> str:
        """The id PostHog events of this request carry."""
        return self.user_id if self.user_id is not None else self.anonymous_id

    @property
    def is_identified(self) -> bool:
        return self.user_id is not None


class Link(NamedTuple):
    """Merge `anonymous_id` into `user_id` (PostHog keeps the user's person)."""

    user_id: str
    anonymous_id: str


class Resolution(NamedTuple):
    """The outcome for one request: who it is, the cookie to set, the link to send.

    A named tuple, as `CookieState`: every first visit and transition builds one.
    """

    identity: Identity
    transition: Transition
    cookie: CookieState | None = None  #: write this cookie; None means no Set-Cookie
    link: Link | None = None


@functools.lru_cache(maxsize=4096)
def _unchanged(verified: Verified) -> Resolution:
    """A returning visitor's resolution when nothing changes: the same for every request
    with this cookie, so made once (the common case, on the path of every request)."""
    state = verified.state
    identity = Identity(state.anonymous_id, None, state.user_hash is not None)
    return Resolution(identity, Transition.NONE)


@functools.lru_cache(maxsize=4096)
def _unchanged_user(verified: Verified, user_id: str) -> Resolution:
    """The same for a signed-in user who is still the cookie's user."""
    return Resolution(Identity(verified.state.anonymous_id, user_id, True), Transition.NONE)


# A hex digit's two low bits under the RFC 4122 variant's high bits: 8, 9, a or b.
_VARIANT = {digit: "89ab"[value & 3] for value, digit in enumerate("0123456789abcdef")}


def new_anonymous_id() -> str:
    """A random UUID (version 4), in the text `str(uuid.uuid4())` prints; a first
    visit mints one, and formatting 16 random bytes costs far less than a `uuid.UUID`."""
    text = os.urandom(16).hex()
    # The 13th hex digit is the version (4), the 17th carries the variant.
    return f"{text[:8]}-{text[8:12]}-4{text[13:16]}-{_VARIANT[text[16]]}{text[17:20]}-{text[20:]}"


# What posthog-js's uuidv7() prints: lower-case hex, version 7, RFC 4122 variant.
_BROWSER_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def browser_id(value: str | None) -> str | None:
    """`value` when it is an anonymous id posthog-js could have minted (a UUIDv7, in
    the lower-case text posthog-js writes), else None: a user id, a name, junk."""
    if value is not None and len(value) == 36 and _BROWSER_ID.fullmatch(value):
        return value
    return None


Offered: TypeAlias = Callable[[], str | None]
"""What the browser says its distinct id is (posthog-js's header or cookie), read on demand."""


def resolve(
    verified: Verified | None,
    report: Report,
    *,
    now: int,
    user_hash: UserHasher,
    max_age: int,
    reset_on_logout: bool = True,
    new_id: Callable[[], str] = new_anonymous_id,
    offered: Offered | None = None,
    left: str | None = None,
    keys: int = 1,
) -> Resolution:
    """Apply the transition table (cookie held, user now -> action, cookie after) to a request.

    `offered` reads the browser's own distinct id (None: adoption is off); it is
    read only in the rows that may take it: no usable cookie, a logout, a
    cookie awaiting the browser's next id. `left` is a user this request
    reported before its current report (a logout inside the request). `keys`
    is how many secrets verify (the `key_index` values `user_hash` takes).
    """
    if verified is None or verified.state.issued_at + max_age <= now:
        return _without_cookie(report, now, user_hash, new_id, offered, left, reset_on_logout)

    state, key_index = verified.state, verified.key_index
    anonymous_id = state.anonymous_id
    due = now - state.issued_at >= REISSUE_AFTER or verified.stale_key

    if state.user_hash is None:
        if state.awaiting is not None:
            return _awaiting(verified, report, now, user_hash, offered, left, keys)
        if isinstance(report, str):
            after = CookieState(anonymous_id, user_hash(report, 0), True, now)
            # An anonymous id is linked at most once, ever.
            link = None if state.linked else Link(report, anonymous_id)
            return Resolution(Identity(anonymous_id, report, True), Transition.LOGIN, after, link)
        if not due:
            return _unchanged(verified)
        return Resolution(Identity(anonymous_id), Transition.NONE, state._replace(issued_at=now))

    if report is NOTHING:
        # The hash cannot be re-keyed without the user id, so a cookie signed by
        # an older secret waits for a request that reports its user.
        if not due or verified.stale_key:
            return _unchanged(verified)
        renewed = state._replace(issued_at=now)
        return Resolution(Identity(anonymous_id, None, True), Transition.NONE, renewed)

    if report is NOBODY:
        if not reset_on_logout:
            kept = CookieState(anonymous_id, None, True, now)
            return Resolution(Identity(anonymous_id), Transition.LOGOUT, kept)
        user = state.user_hash

        def signed_in_here(candidate: str) -> bool:
            # The ids the browser had while signed in: the user's, and the
            # anonymous id linked into them (a browser not reset yet sends them).
            return candidate in (anonymous_id, left) or hmac.compare_digest(
                user_hash(candidate, key_index), user
            )

        taken = _take(offered, signed_in_here)
        if taken is not None:
            # The browser reset first: the next anonymous period is its new id.
            return Resolution(
                Identity(taken), Transition.LOGOUT, CookieState(taken, None, False, now)
            )
        # Minted here, never seen by a browser that keeps its own id: the
        # cookie awaits the browser's next id and remembers which ids are not it
        # (the user's hash as the cookie had it, unless this request named them).
        left_hash = user if left is None else user_hash(left, 0)
        awaiting = left_hash + user_hash(anonymous_id, 0)
        fresh = new_id()
        after = CookieState(fresh, None, False, now, awaiting)
        return Resolution(Identity(fresh), Transition.LOGOUT, after)

    assert isinstance(report, str)
    if hmac.compare_digest(user_hash(report, key_index), state.user_hash):
        if not due:
            return _unchanged_user(verified, report)
        refreshed = state._replace(user_hash=user_hash(report, 0), issued_at=now)
        return Resolution(Identity(anonymous_id, report, True), Transition.NONE, refreshed)

    # Another user on the same browser: a new anonymous id, and never merge users.
    fresh = new_id()
    after = CookieState(fresh, user_hash(report, 0), False, now)
    return Resolution(Identity(fresh, report, True), Transition.SWITCH, after)


def _take(offered: Offered | None, refused: Callable[[str], bool]) -> str | None:
    """The browser's own anonymous id, when it offers one that may be taken."""
    if offered is None:
        return None
    candidate = browser_id(offered())
    return None if candidate is None or refused(candidate) else candidate


def _without_cookie(
    report: Report,
    now: int,
    user_hash: UserHasher,
    new_id: Callable[[], str],
    offered: Offered | None,
    left: str | None,
    reset_on_logout: bool,
) -> Resolution:
    """No usable cookie: the browser's own anonymous id stands in for it, else a new one."""

    def known_user(candidate: str) -> bool:
        return candidate in (report, left)

    taken = _take(offered, known_user)
    if report is NOBODY and left is not None and not reset_on_logout:
        # A logout without reset keeps the id the request had while it reported
        # the user (the same one taken or minted then), marked linked.
        anonymous_id = new_id() if taken is None else taken
        kept = CookieState(anonymous_id, None, True, now)
        return Resolution(Identity(anonymous_id), Transition.LOGOUT, kept)
    if isinstance(report, str):
        if taken is None:
            # A user with no cookie and no id of the browser's: nothing to link,
            # the new id only carries them.
            anonymous_id = new_id()
            state = CookieState(anonymous_id, user_hash(report, 0), False, now)
            return Resolution(Identity(anonymous_id, report, True), Transition.NEW_VISITOR, state)
        # The browser's history joins the user, as posthog-js's identify() would.
        state = CookieState(taken, user_hash(report, 0), True, now)
        identity = Identity(taken, report, True)
        return Resolution(identity, Transition.LOGIN, state, Link(report, taken))
    if taken is not None:
        logout = report is NOBODY and left is not None
        transition = Transition.LOGOUT if logout else Transition.ADOPT
        return Resolution(Identity(taken), transition, CookieState(taken, None, False, now))
    anonymous_id = new_id()
    if report is NOBODY and left is not None:
        # A logout in a request without our cookie: await the browser's next id.
        hashed = user_hash(left, 0)
        state = CookieState(anonymous_id, None, False, now, hashed + hashed)
        return Resolution(Identity(anonymous_id), Transition.LOGOUT, state)
    state = CookieState(anonymous_id, None, False, now)
    return Resolution(Identity(anonymous_id), Transition.NEW_VISITOR, state)


def _awaiting(
    verified: Verified,
    report: Report,
    now: int,
    user_hash: UserHasher,
    offered: Offered | None,
    left: str | None,
    keys: int,
) -> Resolution:
    """An anonymous cookie minted at a logout: the browser's next own id replaces it."""
    state, key_index = verified.state, verified.key_index
    awaiting = state.awaiting
    assert awaiting is not None

    def signed_in_before(candidate: str) -> bool:
        if candidate in (report, left):
            return True
        # Under every secret, not only the one that signed the cookie: a logout
        # on a cookie an older secret signed keeps that secret's hash of its
        # user (the id itself is unknown there), while the newest signs.
        for key in range(max(keys, key_index + 1)):
            hashed = user_hash(candidate, key)
            if hmac.compare_digest(hashed, awaiting[:8]) or hmac.compare_digest(
                hashed, awaiting[8:]
            ):
                return True
        return False

    if isinstance(report, str):
        # Login: the browser's own id when it has a new one, else ours.
        anonymous_id = _take(offered, signed_in_before) or state.anonymous_id
        after = CookieState(anonymous_id, user_hash(report, 0), True, now)
        kept_linked = anonymous_id == state.anonymous_id and state.linked
        link = None if kept_linked else Link(report, anonymous_id)
        return Resolution(Identity(anonymous_id, report, True), Transition.LOGIN, after, link)

    candidate = None if offered is None else offered()
    if candidate == state.anonymous_id:
        # The browser runs on our id (a page bootstrapped it): nothing to await.
        settled = CookieState(state.anonymous_id, None, state.linked, now)
        return Resolution(Identity(state.anonymous_id), Transition.NONE, settled)
    taken = browser_id(candidate)
    if taken is not None and not signed_in_before(taken):
        return Resolution(Identity(taken), Transition.ADOPT, CookieState(taken, None, False, now))
    # The hashes cannot be re-keyed, so a cookie signed by an older secret waits.
    if now - state.issued_at < REISSUE_AFTER or verified.stale_key:
        return _unchanged(verified)
    renewed = state._replace(issued_at=now)
    return Resolution(Identity(state.anonymous_id), Transition.NONE, renewed)
