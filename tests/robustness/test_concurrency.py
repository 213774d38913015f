"""Concurrency isolation: under load, every response carries only its own request's identity.

Hundreds of simulated visitors run at once against a real server in a
subprocess, uvicorn (asyncio), gunicorn (gthread threads) and hypercorn, each
serving `tests.sites.concurrency` with one worker process. Each visitor keeps
its own identity cookie (no cookie jar: the test sends it by hand) and walks a
lifecycle: anonymous pages, a login, pages as the user, sometimes a logout and
anonymous pages again. All visitors run as interleaved asyncio tasks over a
shared connection pool, so a server always has many requests from different
visitors in flight. Some visitors send their login as a burst of concurrent
requests carrying the same pre-login cookie (a browser's page, favicon and
XHRs): one worker process must link their anonymous id exactly once. ASGI
visitors also hit a sync endpoint, run in Starlette's thread pool.

For every response, the test compares with what that visitor alone should
see: the identity cookie set (or not), the id bootstrapped in the injected
snippet, what `current_identity()` said inside the app, and, at the sink, the
server-side capture the request made (found by a per-request marker). A
difference is a *mismatch*; a mismatch whose id belongs to another visitor is
*cross-talk*. Both must be zero; the counts are printed (``-s``) and attached
to the test report as properties.

``POSTHOG_IDENTITY_CONCURRENCY_USERS`` sets the visitors per server (default
150, about 900 requests per server).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from posthog_identity.signing import CookieCodec, CookieState
from posthog_identity.testing import Sink
from tests.helpers.project import SECRET
from tests.helpers.servers import (
    NoCookies,
    Running,
    check_stopped,
    start_concurrency_site,
    stop_process,
)
from tests.helpers.wire import ALIAS, COOKIE, PERSONLESS
from tests.sites.concurrency import WHO_CLOSE, WHO_OPEN

USERS = int(os.environ.get("POSTHOG_IDENTITY_CONCURRENCY_USERS", "150"))
#: Requests in flight at once, at most (the client's connection pool).
CONNECTIONS = 48
#: How many concurrent logins a "burst" visitor sends with its pre-login cookie.
BURST = 3
EVENT_TIMEOUT = 60.0

SNIPPET = re.compile(r"<script data-posthog-identity[^>]*>.*?</script>", re.DOTALL)
OPTIONS = re.compile(r"\}\)\(window,document,(\{.*\})\);</script>\Z", re.DOTALL)
CODEC = CookieCodec((SECRET,))


# ---------------------------------------------------------------------------
# Servers


@dataclass
class Server:
    running: Running
    sink: Sink

    @property
    def kind(self) -> str:
        return self.running.kind

    @property
    def url(self) -> str:
        return self.running.url


@pytest.fixture(scope="module", params=["uvicorn", "gunicorn", "hypercorn"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    kind = str(request.param)
    with Sink() as sink:
        running = start_concurrency_site(
            kind, sink.url, tmp_path_factory.mktemp(f"concurrency-{kind}")
        )
        try:
            yield Server(running, sink)
        finally:
            killed = stop_process(running.process)
        check_stopped(kind, running.log, killed)


# ---------------------------------------------------------------------------
# Visitors and what each one must see


@dataclass
class Visitor:
    index: int
    user: str
    steps: list[str]
    burst: bool
    cookie: str | None = None
    anonymous_id: str | None = None
    logged_in: bool = False
    #: The anonymous id this visitor had when it logged in.
    linked_id: str | None = None


@dataclass
class Capture:
    """What the capture made by one request must carry."""

    visitor: Visitor
    distinct_id: str
    personless: bool


#: What a check is about: the response itself, the capture at the sink, the login link.
KINDS = ("response", "capture", "link")


@dataclass
class Tally:
    requests: int = 0
    #: Requests sent and not answered yet (at most CONNECTIONS on the wire).
    outstanding: int = 0
    max_outstanding: int = 0
    checks: Counter[str] = field(default_factory=Counter)
    mismatches: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    crosstalk: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    #: anonymous ids and user ids -> the visitor they belong to
    owners: dict[str, int] = field(default_factory=dict)
    captures: dict[str, Capture] = field(default_factory=dict)

    def claim(self, visitor: Visitor, anonymous_id: str, where: str) -> None:
        """A newly minted anonymous id: it must never have been anyone's."""
        owner = self.owners.setdefault(anonymous_id, visitor.index)
        if owner != visitor.index:
            detail = f"visitor {visitor.index} {where}: got visitor {owner}'s id"
            self.crosstalk["response"].append(detail)

    def expect(
        self, kind: str, visitor: Visitor, where: str, got: object, expected: object
    ) -> None:
        self.checks[kind] += 1
        if got == expected:
            return
        detail = f"visitor {visitor.index} {where}: got {got!r}, expected {expected!r}"
        self.mismatches[kind].append(detail)
        owner = self.owners.get(got) if isinstance(got, str) else None
        if owner is not None and owner != visitor.index:
            self.crosstalk[kind].append(f"{detail} (visitor {owner}'s)")


def _plan(index: int, rng: random.Random, sync_route: bool) -> Visitor:
    pages = ["/page", "/sync-page"] if sync_route else ["/page"]
    steps = ["/page"]
    steps += rng.choices(pages, k=rng.randint(0, 2))
    steps.append("/login")
    steps += rng.choices(pages, k=rng.randint(1, 3))
    if rng.random() < 0.5:
        steps.append("/logout")
        steps += rng.choices(pages, k=rng.randint(0, 2))
    return Visitor(index, f"user-{uuid.uuid4()}", steps, burst=rng.random() < 0.25)


def _identity_cookies(reply: httpx.Response) -> list[str]:
    values = []
    for header in reply.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        if name.strip() == COOKIE:
            values.append(rest.split(";", 1)[0].strip())
    return values


def _decode(value: str) -> CookieState | None:
    verified = CODEC.loads(value)
    return None if verified is None else verified.state


def _bootstrap(text: str) -> list[dict[str, Any] | None]:
    """The identity bootstrapped by each of our snippets in the page."""
    found = []
    for script in SNIPPET.findall(text):
        options = OPTIONS.search(script)
        found.append(None if options is None else json.loads(options.group(1))["identity"])
    return found


def _who(text: str) -> Any:
    start = text.find(WHO_OPEN)
    end = text.find(WHO_CLOSE, start)
    if start < 0 or end < 0:
        return "missing"
    return json.loads(text[start + len(WHO_OPEN) : end])


def _check(tally: Tally, visitor: Visitor, path: str, reply: httpx.Response) -> None:
    """Compare one response with what this visitor alone should see; update its state."""
    where = f"{path} #{tally.requests}"

    def expect(what: str, got: object, expected: object) -> None:
        tally.expect("response", visitor, f"{where} {what}", got, expected)

    expect("status", reply.status_code, 200)
    cookies = _identity_cookies(reply)
    minted = visitor.cookie is None or path == "/logout"
    expect_cookie = minted or path == "/login"
    expect("Set-Cookie count", len(cookies), 1 if expect_cookie else 0)
    state = _decode(cookies[0]) if cookies else None
    if expect_cookie and state is not None:
        if minted:
            tally.claim(visitor, state.anonymous_id, f"{where} minted")
            visitor.anonymous_id = state.anonymous_id
        expect("cookie id", state.anonymous_id, visitor.anonymous_id)
        visitor.cookie = cookies[0]
    elif expect_cookie:
        expect("cookie verifies", cookies[:1], "a valid cookie")
    if path == "/login":
        visitor.logged_in = True
        if visitor.linked_id is None:
            visitor.linked_id = visitor.anonymous_id
    elif path == "/logout":
        visitor.logged_in = False
    user = visitor.user if visitor.logged_in else None
    if state is not None:
        expect("cookie user", state.user_hash, CODEC.user_hash(user) if user else None)
        if path == "/login":
            expect("cookie linked", state.linked, True)

    anonymous_id = visitor.anonymous_id
    snippets = _bootstrap(reply.text)
    bootstrap = snippets[0] if len(snippets) == 1 else None
    if bootstrap is None:
        expect("snippets", snippets, ["exactly one, with an identity"])
    else:
        expect("bootstrap anonymous", bootstrap["anonymous"], anonymous_id)
        expect("bootstrap user", bootstrap["user"], user)
    who = {"anonymous_id": anonymous_id, "user_id": user, "distinct_id": user or anonymous_id}
    expect("current_identity", _who(reply.text), who)


async def _get(
    http: httpx.AsyncClient, tally: Tally, visitor: Visitor, path: str, cookie: str | None
) -> tuple[str, httpx.Response]:
    marker = uuid.uuid4().hex
    params = {"marker": marker}
    if path == "/login":
        params["user"] = visitor.user
    headers = {}
    if cookie is not None:
        headers["Cookie"] = f"{COOKIE}={cookie}"
    # The app's own auth: the session still knows the user during the logout request.
    if visitor.logged_in or path == "/logout":
        headers["X-User"] = visitor.user
    tally.requests += 1
    tally.outstanding += 1
    tally.max_outstanding = max(tally.max_outstanding, tally.outstanding)
    try:
        reply = await http.get(path, params=params, headers=headers)
    finally:
        tally.outstanding -= 1
    return marker, reply


async def _walk(http: httpx.AsyncClient, tally: Tally, visitor: Visitor, seed: int) -> None:
    rng = random.Random(seed)
    for path in visitor.steps:
        await asyncio.sleep(rng.random() * 0.01)
        count = BURST if path == "/login" and visitor.burst else 1
        cookie = visitor.cookie
        outcomes = await asyncio.gather(
            *(_get(http, tally, visitor, path, cookie) for _ in range(count)),
            return_exceptions=True,
        )
        sent = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            sent.append(outcome)
        for marker, reply in sent:
            # Every reply of a burst must be what one login alone gives.
            if count > 1:
                visitor.logged_in = False
            _check(tally, visitor, path, reply)
            user = visitor.user if visitor.logged_in else None
            distinct_id = user or visitor.anonymous_id
            assert distinct_id is not None
            tally.captures[marker] = Capture(visitor, distinct_id, personless=user is None)


async def _run(url: str, visitors: list[Visitor], tally: Tally) -> None:
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(
        base_url=url, timeout=60.0, limits=limits, cookies=NoCookies()
    ) as http:
        # Every visitor finishes (its connection back in the pool) before a failure
        # is raised, so the pool closes every socket.
        outcomes = await asyncio.gather(
            *(_walk(http, tally, v, v.index) for v in visitors), return_exceptions=True
        )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


def _check_captures(tally: Tally, sink: Sink) -> None:
    """Each request's own capture, found by its marker, carries its own identity."""
    expected = len(tally.captures)
    events = sink.wait_for(
        lambda found: len([e for e in found if "marker" in e["properties"]]) >= expected,
        timeout=EVENT_TIMEOUT,
    )
    by_marker = Counter(e["properties"].get("marker") for e in events)
    for event in events:
        marker = event["properties"].get("marker")
        if marker is None:
            continue
        capture = tally.captures.get(marker)
        if capture is None:
            tally.mismatches["capture"].append(f"an event with an unknown marker {marker!r}")
            continue
        visitor, where = capture.visitor, f"capture {event['event']} {marker}"
        tally.expect("capture", visitor, f"{where} count", by_marker[marker], 1)
        got = event["distinct_id"]
        tally.expect("capture", visitor, f"{where} distinct_id", got, capture.distinct_id)
        personless = event["properties"].get(PERSONLESS) is False
        tally.expect("capture", visitor, f"{where} personless", personless, capture.personless)


def _check_links(tally: Tally, visitors: list[Visitor], sink: Sink) -> int:
    """One link per login, whatever the burst: user <- the pre-login anonymous id.

    The server's one posthog client sends in order: a link is enqueued before
    any capture of a later request of that visitor, all of which arrived.
    """
    links = sink.events(event=ALIAS)
    by_user: dict[str, list[str]] = {}
    for link in links:
        by_user.setdefault(link["distinct_id"], []).append(link["properties"]["alias"])
    for visitor in visitors:
        found = by_user.pop(visitor.user, [])
        tally.expect("link", visitor, "links", found, [visitor.linked_id])
    if by_user:
        tally.mismatches["link"].append(f"links for users nobody logged in as: {by_user}")
    return len(links)


@dataclass
class Load:
    """One server's run: what was sent, what was checked, what differed."""

    kind: str
    visitors: list[Visitor]
    tally: Tally
    links: int
    seconds: float

    def summary(self) -> dict[str, Any]:
        tally = self.tally
        return {
            "server": self.kind,
            "users": len(self.visitors),
            "requests": tally.requests,
            "connections": CONNECTIONS,
            "max_outstanding": tally.max_outstanding,
            "burst_logins": sum(v.burst for v in self.visitors) * BURST,
            "captures": len(tally.captures),
            "links": self.links,
            "checks": sum(tally.checks.values()),
            "mismatches": sum(len(found) for found in tally.mismatches.values()),
            "cross_talk": sum(len(found) for found in tally.crosstalk.values()),
            "seconds": round(self.seconds, 1),
        }


@pytest.fixture(scope="module")
def load(server: Server) -> Load:
    """Hundreds of visitors at once through the server; every response, capture and link checked."""
    rng = random.Random(f"{server.kind}-{USERS}")
    visitors = [_plan(index, rng, server.kind != "gunicorn") for index in range(USERS)]
    tally = Tally(owners={visitor.user: visitor.index for visitor in visitors})
    started = time.monotonic()
    asyncio.run(_run(server.url, visitors, tally))
    seconds = time.monotonic() - started
    _check_captures(tally, server.sink)
    links = _check_links(tally, visitors, server.sink)
    done = Load(server.kind, visitors, tally, links, seconds)
    print(f"\nconcurrency {json.dumps(done.summary())}")
    return done


def _report(load: Load, kind: str, record_property: Any) -> None:
    record_property("summary", json.dumps(load.summary()))
    record_property(f"{kind}_checks", load.tally.checks[kind])
    record_property(f"{kind}_cross_talk", len(load.tally.crosstalk[kind]))


def test_under_load_requests_from_many_visitors_are_in_flight_at_once(load: Load) -> None:
    assert load.tally.requests >= len(load.visitors) * 4
    assert load.tally.max_outstanding >= min(USERS, CONNECTIONS)


def test_under_load_every_response_carries_only_its_own_visitors_identity(
    load: Load, record_property: Any
) -> None:
    """Its cookie, the id bootstrapped in its snippet and what the app saw."""
    _report(load, "response", record_property)
    assert load.tally.crosstalk["response"] == [], load.tally.crosstalk["response"][:20]
    assert load.tally.mismatches["response"] == [], load.tally.mismatches["response"][:20]


def test_under_load_every_server_capture_carries_its_own_requests_identity(
    load: Load, record_property: Any
) -> None:
    _report(load, "capture", record_property)
    assert len(load.tally.captures) == load.tally.requests
    assert load.tally.crosstalk["capture"] == [], load.tally.crosstalk["capture"][:20]
    assert load.tally.mismatches["capture"] == [], load.tally.mismatches["capture"][:20]


def test_under_load_concurrent_logins_with_one_pre_login_cookie_link_it_once(
    load: Load, record_property: Any
) -> None:
    _report(load, "link", record_property)
    assert any(visitor.burst for visitor in load.visitors)
    assert load.links == len(load.visitors)
    assert load.tally.crosstalk["link"] == [], load.tally.crosstalk["link"][:20]
    assert load.tally.mismatches["link"] == [], load.tally.mismatches["link"][:20]
