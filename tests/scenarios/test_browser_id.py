"""Single-page apps and API backends: server events on posthog-js's own anonymous id.

One table of stories, each a browser's calls to the basic site, run through
both adapters in-process. A call sends posthog-js's distinct id as
X-POSTHOG-DISTINCT-ID (`header`) or in its persistence cookie (`posthog_js`,
marked `identified` once posthog-js is on a known user); `ours` says whether
it carries our cookie (same-site, `credentials: 'include'`) or not
(cross-site), and `store` whether the browser keeps the answer's.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import pytest

from tests.helpers.drivers import Driver, driver_for, make_site
from tests.helpers.posthog_js import posthog_js_cookie

if TYPE_CHECKING:
    import posthog

    from posthog_identity.settings import Settings
    from posthog_identity.testing import Sink

X = "0193a6b2-7c1e-7a1b-9c2d-3e4f5a6b7c8d"  #: posthog-js's anonymous id
X2 = "0193a6b3-0000-7000-8000-000000000002"  #: its next one, after posthog.reset()
#: A user id that is a UUIDv7 too (apps that key users by one).
UV7 = "0193a6b2-1111-7111-a111-111111111111"
#: Expect an id we minted: a UUID4, none of the browser's.
MINTED = "minted"


@dataclass(frozen=True)
class Call:
    path: str = "/whoami"
    user: str | None = None  #: who the app's session says is logged in
    header: str | None = None  #: X-POSTHOG-DISTINCT-ID
    posthog_js: str | None = None  #: the distinct_id in posthog-js's cookie
    identified: bool = False  #: posthog-js's cookie says it identified a user
    ours: bool = True  #: the call carries our cookie
    store: bool | None = None  #: the browser keeps the answer's cookie (default: `ours`)
    expect: str | None = None  #: the distinct id /whoami reports


def cross(call: Call) -> Call:
    """The same call from another site: no cookie of ours sent, none kept."""
    return replace(call, ours=False)


def play(site: Driver, calls: list[Call]) -> None:
    for number, call in enumerate(calls, 1):
        headers = {} if call.header is None else {"X-POSTHOG-DISTINCT-ID": call.header}
        jar = []
        if call.ours and site.cookie:
            jar.append(f"ph_identity={site.cookie}")
        if call.posthog_js is not None:
            state = "identified" if call.identified else "anonymous"
            jar.append(posthog_js_cookie(distinct_id=call.posthog_js, **{"$user_state": state}))
        kept = site.cookie
        reply = site.get(call.path, user=call.user, cookie="; ".join(jar), headers=headers)
        assert reply.status in (200, 302), f"call {number}"
        if not (call.ours if call.store is None else call.store):
            site.cookie = kept
        if call.expect is None:
            continue
        distinct_id = json.loads(reply.body)["identity"]["distinct_id"]
        if call.expect == MINTED:
            assert uuid.UUID(distinct_id).version == 4, f"call {number}: {distinct_id}"
        else:
            assert distinct_id == call.expect, f"call {number}"


LOGIN_ALICE = Call("/login?user=alice", header=X)
STORIES: dict[str, tuple[list[Call], list[tuple[str, str]]]] = {
    "cross-site-anonymous-calls-share-the-browsers-id": (
        [cross(Call(header=X, expect=X)), cross(Call(header=X, expect=X))],
        [],
    ),
    "same-site-the-browsers-id-is-signed-into-our-cookie": (
        [Call(header=X, expect=X), Call(header=X, expect=X), Call(expect=X)],
        [],
    ),
    "a-page-load-takes-posthog-js-cookies-id": (
        [Call(posthog_js=X, expect=X), Call(expect=X)],
        [],
    ),
    "a-forged-header-that-is-not-a-uuidv7-is-ignored": (
        [cross(Call(header="someone-else", expect=MINTED))],
        [],
    ),
    "a-valid-cookie-wins-over-the-header": (
        [Call(header=X, expect=X), Call(header=X2, expect=X)],
        [],
    ),
    "a-reported-user-wins-over-the-header": (
        [cross(Call(user="alice", header=X, expect="alice"))],
        [("alice", X)],
    ),
    "cross-site-login-links-the-browsers-id-once": (
        [
            cross(Call(header=X, expect=X)),
            cross(LOGIN_ALICE),
            # posthog.identify(): the header now carries the user id.
            cross(Call(user="alice", header="alice", expect="alice")),
            cross(Call(user="alice", header="alice", expect="alice")),
        ],
        [("alice", X)],
    ),
    "same-site-logout-then-reset-takes-the-browsers-new-id": (
        [
            Call(header=X, expect=X),
            LOGIN_ALICE,
            Call(user="alice", header="alice", expect="alice"),
            Call("/logout", user="alice", header="alice"),
            Call(header=X2, expect=X2),  # posthog.reset()
            Call("/login?user=bob", header=X2),
        ],
        [("alice", X), ("bob", X2)],
    ),
    "cross-site-logout-then-reset-takes-the-browsers-new-id": (
        [
            cross(Call(header=X, expect=X)),
            cross(LOGIN_ALICE),
            cross(Call("/logout", user="alice", header="alice")),
            cross(Call(header=X2, expect=X2)),
            cross(Call("/login?user=bob", header=X2)),
        ],
        [("alice", X), ("bob", X2)],
    ),
    "a-logout-request-without-our-cookie-whose-answer-is-kept": (
        [
            Call(header=X, expect=X),
            LOGIN_ALICE,
            Call("/logout", user="alice", header="alice", ours=False, store=True),
            Call(header=X2, expect=X2),
        ],
        [("alice", X)],
    ),
    "a-logout-request-without-our-cookie-whose-answer-is-lost": (
        [
            Call(header=X, expect=X),
            LOGIN_ALICE,
            Call("/logout", user="alice", header="alice", ours=False),
            # Our cookie still names alice: this call, reporting nobody, is the logout.
            Call(header=X2, expect=X2),
        ],
        [("alice", X)],
    ),
    "the-user-who-left-is-never-taken-for-an-anonymous-visitor": (
        [
            Call(header=X, expect=X),
            Call(f"/login?user={UV7}", header=X),
            Call(user=UV7, header=UV7, expect=UV7),
            Call("/logout", user=UV7, header=UV7),
            Call(header=UV7, expect=MINTED),  # a call before posthog.reset()
            Call(header=X, expect=MINTED),  # nor the id linked into them
            Call(header=X2, expect=X2),
        ],
        [(UV7, X)],
    ),
    "an-identified-browsers-header-is-not-adopted": (
        # posthog-js still on a user (its cookie says so) after our cookie is
        # gone: its header is the user's UUIDv7 id, not an anonymous visitor's.
        [Call(header=UV7, posthog_js=UV7, identified=True, ours=False, expect=MINTED)],
        [],
    ),
    "an-identified-browsers-header-is-not-linked-into-the-next-user": (
        [
            Call(
                "/login?user=bob",
                header=UV7,
                posthog_js=UV7,
                identified=True,
                ours=False,
                store=True,
            ),
            Call(user="bob", expect="bob"),
        ],
        [],
    ),
}


@pytest.mark.parametrize("story", list(STORIES))
def test_story(site: Driver, sink: Sink, client: posthog.Client, story: str) -> None:
    calls, links = STORIES[story]
    play(site, calls)
    client.flush()  # every link sent has reached the sink: none may be missing below
    aliases = sink.wait_for(event="$create_alias", count=len(links)) if links else []
    assert [(a["distinct_id"], a["properties"]["alias"]) for a in aliases] == links
    if not links:
        assert sink.events("$create_alias") == []


def test_anonymous_captures_on_the_browsers_id_stay_personless(site: Driver, sink: Sink) -> None:
    headers = {"X-POSTHOG-DISTINCT-ID": X}
    site.get("/", cookie="", headers=headers)
    site.get("/", cookie="", headers=headers)
    events = sink.wait_for(event="Home Viewed", count=2)
    assert [event["distinct_id"] for event in events] == [X, X]
    assert all(event["properties"]["$process_person_profile"] is False for event in events)


def test_with_adoption_off_the_browsers_id_is_never_taken(
    adapter: str, settings: Settings, client: posthog.Client
) -> None:
    site = driver_for(
        adapter, make_site(adapter, replace(settings, adopt_browser_id=False), client)
    )
    play(site, [cross(Call(header=X, expect=MINTED)), Call(posthog_js=X, expect=MINTED)])


def test_a_cors_preflight_passes_through_untouched(site: Driver) -> None:
    headers = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-posthog-distinct-id",
        "Origin": "https://spa.example",
        "X-POSTHOG-DISTINCT-ID": X,
    }
    reply = site.get("/whoami", method="OPTIONS", headers=headers)
    assert reply.headers_named("Set-Cookie") == []
    assert json.loads(reply.body) == {"identity": None}, "no identity, no context"


def test_a_plain_options_request_is_not_a_preflight(site: Driver) -> None:
    reply = site.get("/whoami", method="OPTIONS", headers={"X-POSTHOG-DISTINCT-ID": X})
    assert json.loads(reply.body)["identity"]["distinct_id"] == X


def test_a_logout_while_the_secret_rotates_never_takes_the_user_who_left(
    adapter: str, settings: Settings, client: posthog.Client
) -> None:
    # Signed in under the old secret; a new one is prepended before the logout
    # (the session ended: the app reports nobody), whose cookie the new secret
    # signs while it can remember the user only by the old secret's hash.
    before = driver_for(adapter, make_site(adapter, settings, client))
    play(before, [Call(header=X, expect=X), Call(f"/login?user={UV7}", header=X)])
    rotated = replace(settings, secrets=("a-newer-secret", *settings.secrets))
    after = driver_for(adapter, make_site(adapter, rotated, client))
    after.cookie = before.cookie
    play(
        after,
        [
            Call(header=UV7, expect=MINTED),  # the logout, before posthog.reset()
            Call(header=UV7, expect=MINTED),
            Call(header=X2, expect=X2),
        ],
    )
