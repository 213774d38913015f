"""The real posthog-js, in Chromium, tells PostHog the same story as the server.

Each test drives one fresh browser profile through `tests.sites.browser` under
gunicorn (WSGI) and uvicorn (ASGI), and reads what reached the session's sink:
posthog-js's events (``$lib`` "web"), the site's server captures and the
middleware's aliases (``$lib`` "posthog-python").

Every page load gets a ``step`` query parameter, so each event says which page
it came from: browser events through ``$current_url``, server captures through
their ``step`` property. The browser's user agent carries a tag for the test
(``PHIdentityE2E/<tag>``), so events from other tests never count. Absence
("exactly one alias") is asserted after a later event proved the earlier ones
arrived: the server's events leave in order from one client thread, and the
test ends with a checkpoint event sent by posthog-js itself.

Two tests pin what distinct ids alone would not show: after a logout no
property of the old user (``$user_id``, the session) rides on the new id, and a
switch gives the new user a new ``$device_id`` (posthog-js's
``reset({resetDeviceID: true})``; a plain reset or an anonymous bootstrap keeps them).

Each test prints the (event, distinct id) sequence it saw, ids shown by their
role (A, B: anonymous ids in the order the identity cookie held them; U, V:
users), so ``pytest -s`` shows the story.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from posthog_identity.signing import CookieState
from tests.helpers.browser import (
    POSTHOG_JS_VERSION,
    SERVER_KINDS,
    site,
    site_environment,
)
from tests.helpers.servers import Server, check_errors, free_port
from tests.helpers.wire import COOKIE, distinct_id, read_cookie

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Route

    from posthog_identity.testing import Sink

EVENT_TIMEOUT = 10.0
WAIT_SLICE = 0.02
WEB = "web"
ALIAS = "$create_alias"
IDENTIFY = "$identify"
#: Events that merge two distinct ids into one person, and the property naming the other id.
LINKS = {ALIAS: "alias", IDENTIFY: "$anon_distinct_id", "$merge_dangerously": "alias"}
SERVER_PAGE = "Server Page Viewed"
CHECKPOINT = "E2E Checkpoint"
#: The ids an event carries: who it is for, who it merges in, and the device.
ID_PROPERTIES = ("$anon_distinct_id", "alias", "$device_id")

Event = dict[str, Any]

# The test's own listener; Playwright's init scripts are not subject to the page's CSP.
CSP_LISTENER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(
    {directive: e.effectiveDirective, blocked: e.blockedURI, sample: e.sample});
});
"""
CSP_MESSAGE = re.compile(r"content.security.policy", re.IGNORECASE)


def props(event: Event) -> dict[str, Any]:
    found = event.get("properties")
    return found if isinstance(found, dict) else {}


def is_web(event: Event) -> bool:
    return props(event).get("$lib") == WEB


def step_of(event: Event) -> int | None:
    """The step of the page an event came from (None for the middleware's aliases)."""
    properties = props(event)
    if is_web(event):
        found = parse_qs(urlsplit(str(properties.get("$current_url", ""))).query).get("step")
    else:
        found = [properties["step"]] if properties.get("step") else None
    return int(found[0]) if found else None


def ids_of(event: Event) -> set[str]:
    carried = {distinct_id(event), *(props(event).get(name) for name in ID_PROPERTIES)}
    return {value for value in carried if isinstance(value, str)}


def person_ids_of(event: Event) -> set[str]:
    """The ids PostHog resolves the event's person by (not the device)."""
    carried = {distinct_id(event), props(event).get("$anon_distinct_id"), props(event).get("alias")}
    return {value for value in carried if isinstance(value, str)}


def links(events: Iterable[Event]) -> list[tuple[str, str]]:
    """(distinct id, merged-in id) of every event that merges two ids."""
    found = []
    for event in events:
        other = props(event).get(LINKS.get(event["event"], ""))
        if isinstance(other, str):
            found.append((str(distinct_id(event)), other))
    return found


def connected(events: Iterable[Event], first: set[str], second: set[str]) -> bool:
    """Whether any chain of merges in `events` joins an id of `first` with one of `second`."""
    parent: dict[str, str] = {}

    def root(value: str) -> str:
        while parent.get(value, value) != value:
            value = parent[value]
        return value

    for one, other in links(events):
        parent[root(one)] = root(other)
    return {root(v) for v in first} & {root(v) for v in second} != set()


@dataclass
class Visitor:
    """One person's browser: a fresh Chromium profile on one server."""

    server: Server
    context: BrowserContext
    page: Page
    tag: str
    #: False when posthog-js cannot load: only the server's events are awaited.
    browser_events: bool = True
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # id -> its role: A, B, U, V
    anonymous_ids: list[str] = field(default_factory=list)
    step: int = 0
    checkpoints: int = 0

    @property
    def sink(self) -> Sink:
        return self.server.sink

    # -- what the browser does ---------------------------------------------------

    def visit(self, path: str, *, then: bool = False, **query: str) -> int:
        """Load `path` as the next step; wait for its $pageview (and server capture)."""
        self.step += 1
        step = self.step
        params = {"step": str(step), **query}
        if then:  # the page's forms lead to the next step
            params["then"] = str(step + 1)
        self.page.goto(f"{self.server.url}{path}?{urlencode(params)}")
        self._arrived(step, server_capture=path == "/capture")
        return step

    def login(self, name: str, label: str) -> int:
        """Sign in with the login form; returns the step of the page it leads to."""
        self.labels.setdefault(name, label)
        self.visit("/login", then=True)
        self.page.fill("#name", name)
        return self._submit("#login")

    def logout(self) -> int:
        """Sign out with a page's logout button; returns the step of the page it leads to."""
        self.visit("/capture", then=True)
        return self._submit("#logout")

    def _submit(self, button: str) -> int:
        self.step += 1
        landing = self.step
        self.page.click(button)
        self.page.wait_for_url(re.compile(rf"/capture\?step={landing}$"))
        self._arrived(landing, server_capture=True)
        return landing

    def checkpoint(self) -> None:
        """Send an event from posthog-js and wait for it: what it sent before has arrived."""
        self.checkpoints += 1
        number = self.checkpoints
        self.page.evaluate(
            "([name, n]) => window.posthog.capture(name, {checkpoint: n})", [CHECKPOINT, number]
        )
        self.wait(lambda e: e["event"] == CHECKPOINT and props(e).get("checkpoint") == number)

    # -- what the sink received ----------------------------------------------------

    def _arrived(self, step: int, *, server_capture: bool) -> None:
        self.anonymous_id()  # label the cookie's anonymous id as it changes
        if self.browser_events:
            self.wait(lambda e: e["event"] == "$pageview" and step_of(e) == step, web=True)
        if server_capture:
            self.wait(lambda e: e["event"] == SERVER_PAGE and step_of(e) == step, web=False)

    def wait(self, predicate: Callable[[Event], bool], *, web: bool | None = None) -> None:
        def found(events: list[Event]) -> bool:
            return any(
                predicate(e) and (web is None or is_web(e) == web) for e in self._mine(events)
            )

        # Playwright runs the route handler only while Python is inside one of its
        # calls: wait on the sink in short slices and let the page go on in between.
        deadline = time.monotonic() + EVENT_TIMEOUT
        while True:
            try:
                self.sink.wait_for(found, timeout=WAIT_SLICE)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
            self.page.wait_for_timeout(WAIT_SLICE * 1000)

    def _mine(self, events: list[Event]) -> list[Event]:
        known = set(self.labels)

        def mine(event: Event) -> bool:
            properties = props(event)
            if is_web(event):
                return self.tag in str(properties.get("$raw_user_agent", ""))
            if properties.get("e2e_browser") == self.tag:
                return True
            return event["event"] in LINKS and bool(ids_of(event) & known)

        return [e for e in events if mine(e)]

    def events(self) -> list[Event]:
        """This browser's events, the browser's and the server's, in arrival order."""
        return self._mine(self.sink.events())

    def cookie(self) -> CookieState:
        found = [c for c in self.context.cookies(self.server.url) if c.get("name") == COOKIE]
        assert len(found) == 1, f"expected one {COOKIE} cookie, got {found}"
        return read_cookie(str(found[0].get("value")))

    def anonymous_id(self) -> str:
        """The identity cookie's anonymous id, labelled A, B, ... as it first appears."""
        anonymous = self.cookie().anonymous_id
        if anonymous not in self.anonymous_ids:
            self.anonymous_ids.append(anonymous)
            self.labels[anonymous] = "ABCDEFGH"[len(self.anonymous_ids) - 1]
        return anonymous

    def name(self, value: object) -> str:
        return self.labels.get(str(value), f"?{value}") if value is not None else "-"

    def sequence(self) -> list[tuple[str, str]]:
        """(event name, distinct id by role) for this browser, in the order captured."""
        return [(e["event"], self.name(distinct_id(e))) for e in in_capture_order(self.events())]

    def report(self, title: str) -> str:
        """What this browser's story looked like at the sink, one line per event."""
        legend = ", ".join(f"{label}={value}" for value, label in sorted_labels(self.labels))
        lines = [f"=== {title} [{self.server.kind}] posthog-js {POSTHOG_JS_VERSION}: {legend}"]
        for event in in_capture_order(self.events()):
            properties = props(event)
            extra = [
                f"{name}={self.name(properties[name])}"
                for name in ID_PROPERTIES
                if name in properties
            ]
            lib = "browser" if is_web(event) else "server"
            step = step_of(event)
            where = f"step {step} {urlsplit(str(properties.get('$current_url', ''))).path}"
            lines.append(
                f"  {lib:7} {event['event']:20} {self.name(distinct_id(event)):2} "
                f"{where if step is not None else '':22} {' '.join(extra)}".rstrip()
            )
        lines.append(f"  sequence: {self.sequence()}")
        lines.extend(f"  console {message}" for message in self.console)
        lines.extend(f"  page error {error}" for error in self.errors)
        return "\n".join(lines)


def sorted_labels(labels: dict[str, str]) -> list[tuple[str, str]]:
    return sorted(labels.items(), key=lambda item: item[1])


def in_capture_order(events: list[Event]) -> list[Event]:
    """Sorted by each event's own timestamp: browser and server share this machine's clock.

    Arrival order differs: posthog-js sends each event on its own request.
    """

    def when(event: Event) -> datetime:
        stamp = str(event.get("timestamp", ""))
        try:
            return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            return datetime.max.replace(tzinfo=timezone.utc)

    return sorted(events, key=when)


def user_agent(browser: Browser, tag: str) -> str:
    """A desktop Chrome user agent (posthog-js drops ``HeadlessChrome``), tagged."""
    major = browser.version.split(".")[0]
    return (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        f"Chrome/{major}.0.0.0 Safari/537.36 PHIdentityE2E/{tag}"
    )


@pytest.fixture
def new_visitor(
    browser: Browser, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Visitor]]:
    """Makes visitors (fresh profiles); closes them and prints what each saw."""
    made: list[tuple[Visitor, int]] = []

    def make(server: Server, *, browser_events: bool = True) -> Visitor:
        tag = uuid.uuid4().hex
        context = browser.new_context(user_agent=user_agent(browser, tag))
        visitor = Visitor(server, context, context.new_page(), tag, browser_events)
        made.append((visitor, server.log.stat().st_size))

        def local_only(route: Route) -> None:
            # Nothing leaves the machine: every request but 127.0.0.1's is refused.
            if urlsplit(route.request.url).hostname == "127.0.0.1":
                route.continue_()
            else:
                visitor.blocked.append(route.request.url)
                route.abort()

        def console(message: ConsoleMessage) -> None:
            visitor.console.append(f"{message.type}: {message.text}")

        context.route("**/*", local_only)
        context.add_init_script(CSP_LISTENER)
        context.set_default_timeout(EVENT_TIMEOUT * 1000)
        visitor.page.on("console", console)
        visitor.page.on("pageerror", lambda error: visitor.errors.append(str(error)))
        return visitor

    yield make
    for visitor, log_start in made:
        try:
            visitor.context.close()
        finally:
            print("\n" + visitor.report(request.node.name))
        check_errors(visitor.server, "during the test", since=log_start)
        visitor.server.log_size_at_teardown = visitor.server.log.stat().st_size
        assert visitor.blocked == [], "the page asked for something off this machine"


@pytest.fixture
def visitor(server: Server, new_visitor: Callable[..., Visitor]) -> Visitor:
    return new_visitor(server)


@pytest.fixture(params=SERVER_KINDS)
def blocked_server(
    request: pytest.FixtureRequest, sink: Sink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The site under one server, told to load posthog-js from a port nobody listens on."""
    kind = str(request.param)
    env = site_environment(sink, f"http://127.0.0.1:{free_port()}/static/array.js")
    yield from site(kind, env, sink, tmp_path_factory.mktemp(f"e2e-blocked-{kind}"))


def new_user() -> str:
    return f"user-{uuid.uuid4()}"


def web_events(events: list[Event], *, since: int = 0, until: int | None = None) -> list[Event]:
    """posthog-js's events from the pages of steps since..until (inclusive)."""
    return [
        e
        for e in events
        if is_web(e)
        and (step := step_of(e)) is not None
        and step >= since
        and (until is None or step <= until)
    ]


def server_events(events: list[Event], name: str) -> list[Event]:
    return [e for e in events if not is_web(e) and e["event"] == name]


def linked(events: list[Event], name: str) -> list[tuple[str, str]]:
    """(distinct id, merged-in id) of the events named `name`."""
    return links(e for e in events if e["event"] == name)


# ---------------------------------------------------------------------------
# Scenarios


def test_first_visit_browser_and_server_share_the_cookie_id(visitor: Visitor) -> None:
    step = visitor.visit("/capture")
    visitor.checkpoint()

    anonymous = visitor.anonymous_id()
    events = visitor.events()
    browser = web_events(events)
    assert browser, "posthog-js sent nothing"
    assert {distinct_id(e) for e in browser} == {anonymous}
    assert {props(e).get("$device_id") for e in browser} == {anonymous}
    [served] = server_events(events, SERVER_PAGE)
    assert (distinct_id(served), step_of(served)) == (anonymous, step)
    assert set().union(*map(ids_of, events)) == {anonymous}
    assert visitor.errors == []


def test_login_links_once_and_the_browser_follows(visitor: Visitor) -> None:
    visitor.visit("/capture")
    anonymous = visitor.anonymous_id()
    user = new_user()

    landing = visitor.login(user, "U")
    visitor.visit("/")
    visitor.visit("/capture")
    visitor.checkpoint()

    state = visitor.cookie()
    assert (state.anonymous_id, state.linked) == (anonymous, True)
    events = visitor.events()
    assert linked(server_events(events, ALIAS), ALIAS) == [(user, anonymous)]
    # posthog-js links the same two ids, the same way round, once.
    assert linked(web_events(events), IDENTIFY) == [(user, anonymous)]
    assert {distinct_id(e) for e in web_events(events, until=landing - 1)} == {anonymous}
    assert {distinct_id(e) for e in web_events(events, since=landing)} == {user}
    served = server_events(events, SERVER_PAGE)
    assert [distinct_id(e) for e in served] == [anonymous, user, user]
    # No third id anywhere: distinct ids, merged-in ids and device ids.
    assert set().union(*map(ids_of, events)) == {anonymous, user}
    assert visitor.errors == []


def test_logout_moves_the_browser_to_the_new_anonymous_id(visitor: Visitor) -> None:
    visitor.visit("/capture")
    first = visitor.anonymous_id()
    user = new_user()
    visitor.login(user, "U")

    landing = visitor.logout()
    fresh = visitor.anonymous_id()
    visitor.visit("/")
    visitor.visit("/capture")
    visitor.checkpoint()

    state = visitor.cookie()
    assert fresh != first
    assert (state.user_hash, state.linked) == (None, False)
    events = visitor.events()
    after = [e for e in events if (step_of(e) or 0) >= landing]
    assert {distinct_id(e) for e in web_events(after)} == {fresh}
    assert [distinct_id(e) for e in server_events(after, SERVER_PAGE)] == [fresh, fresh]
    # Nothing after the logout lands on the old user or its anonymous id.
    assert set().union(*map(ids_of, after)) == {fresh}
    assert not connected(visitor.sink.events(), {user, first}, {fresh})
    assert visitor.errors == []


def test_account_switch_never_links_the_two_users(visitor: Visitor) -> None:
    visitor.visit("/capture")
    first = visitor.anonymous_id()
    one, other = new_user(), new_user()
    visitor.login(one, "U")
    logged_out = visitor.logout()
    second = visitor.anonymous_id()

    landing = visitor.login(other, "V")
    visitor.visit("/capture")
    visitor.checkpoint()

    events = visitor.events()
    assert linked(server_events(events, ALIAS), ALIAS) == [(one, first), (other, second)]
    assert linked(web_events(events), IDENTIFY) == [(one, first), (other, second)]
    assert {distinct_id(e) for e in web_events(events, since=landing)} == {other}
    # V's events, and those of V's anonymous id, never carry U's ids.
    theirs = [e for e in events if distinct_id(e) in (other, second)]
    assert [e for e in theirs if {one, first} & ids_of(e)] == []
    assert all((step_of(e) or logged_out) >= logged_out for e in theirs)
    assert not connected(visitor.sink.events(), {one, first}, {other, second})
    assert visitor.errors == []


def test_switch_without_logout_resets_before_identifying(visitor: Visitor) -> None:
    """V signs in over U's session: the server links nothing, posthog-js resets first."""
    visitor.visit("/capture")
    first = visitor.anonymous_id()
    one, other = new_user(), new_user()
    visitor.login(one, "U")

    landing = visitor.login(other, "V")
    second = visitor.anonymous_id()
    visitor.visit("/capture")
    visitor.checkpoint()

    assert second != first
    events = visitor.events()
    assert linked(server_events(events, ALIAS), ALIAS) == [(one, first)]
    assert linked(web_events(events), IDENTIFY) == [(one, first), (other, second)]
    after = web_events(events, since=landing)
    assert {distinct_id(e) for e in after} == {other}
    assert set().union(*map(person_ids_of, after)) == {other, second}
    assert not connected(visitor.sink.events(), {one, first}, {other, second})
    assert visitor.errors == []


def test_logout_leaves_no_user_property_or_session_behind(visitor: Visitor) -> None:
    visitor.visit("/capture")
    user = new_user()
    visitor.login(user, "U")
    landing = visitor.logout()
    visitor.visit("/capture")
    visitor.checkpoint()

    events = web_events(visitor.events())
    before = web_events(events, until=landing - 1)
    after = web_events(events, since=landing)
    carrying_user = [(e["event"], k) for e in after for k, v in props(e).items() if v == user]
    assert carrying_user == []
    sessions = {props(e).get("$session_id") for e in before}
    assert {props(e).get("$session_id") for e in after}.isdisjoint(sessions)


def test_switch_without_logout_gives_the_new_user_its_own_device_id(visitor: Visitor) -> None:
    visitor.visit("/capture")
    visitor.login(new_user(), "U")
    landing = visitor.login(new_user(), "V")
    visitor.checkpoint()

    after = web_events(visitor.events(), since=landing)
    # By role: B is V's own anonymous id, A the one linked into U.
    assert {visitor.name(props(e).get("$device_id")) for e in after} == {"B"}


def test_csp_nonce_page_runs_the_snippet_without_violations(visitor: Visitor) -> None:
    visitor.visit("/csp")  # waits for posthog-js's $pageview: the snippet ran
    visitor.checkpoint()

    assert visitor.page.text_content("#inline") == "inline script ran"
    assert visitor.page.evaluate("window.__cspViolations") == []
    assert [m for m in visitor.console if CSP_MESSAGE.search(m)] == []
    anonymous = visitor.anonymous_id()
    assert {distinct_id(e) for e in web_events(visitor.events())} == {anonymous}

    # The listener and the policy work: a script without the nonce is reported.
    visitor.visit("/csp", canary="1")
    violations = visitor.page.evaluate("window.__cspViolations")
    assert [v["sample"] for v in violations] == ["document.title='csp canary ran';"]
    assert visitor.page.title() == "CSP"
    assert len([m for m in visitor.console if CSP_MESSAGE.search(m)]) == 1
    assert visitor.errors == []


@pytest.mark.parametrize("path", ["/stream", "/nohead"])
def test_streamed_and_headless_pages_carry_the_right_id(visitor: Visitor, path: str) -> None:
    before = visitor.visit(path)
    anonymous = visitor.anonymous_id()
    user = new_user()
    visitor.login(user, "U")
    after = visitor.visit(path)
    visitor.checkpoint()

    snippets = visitor.page.locator("script[data-posthog-identity]")
    assert snippets.count() == 1
    events = visitor.events()
    assert {distinct_id(e) for e in web_events(events, since=before, until=before)} == {anonymous}
    assert {distinct_id(e) for e in web_events(events, since=after, until=after)} == {user}
    assert set().union(*map(ids_of, events)) == {anonymous, user}
    assert visitor.errors == []


def test_posthog_js_blocked_the_page_works_and_the_server_aliases(
    blocked_server: Server, new_visitor: Callable[..., Visitor]
) -> None:
    visitor = new_visitor(blocked_server, browser_events=False)
    visitor.visit("/capture")
    anonymous = visitor.anonymous_id()

    assert visitor.page.locator("#title").is_visible()
    assert visitor.page.text_content("#title") == "Captured"
    # The loader's queue stands in for posthog-js and keeps taking calls.
    assert visitor.page.evaluate("Array.isArray(window.posthog)") is True
    visitor.page.evaluate("window.posthog.capture('queued while blocked')")
    user = new_user()
    visitor.login(user, "U")  # the form still works
    assert visitor.page.text_content("#who") == f"Signed in as {user}"

    events = visitor.events()
    assert linked(server_events(events, ALIAS), ALIAS) == [(user, anonymous)]
    assert [distinct_id(e) for e in server_events(events, SERVER_PAGE)] == [anonymous, user]
    assert web_events(events) == []
    assert visitor.errors == []
    failed = [m for m in visitor.console if m.startswith("error:")]
    assert all("ERR_CONNECTION_REFUSED" in m for m in failed), failed


def test_a_server_event_of_the_pages_fetch_joins_the_browsers_session(visitor: Visitor) -> None:
    step = visitor.visit("/fetching")
    visitor.wait(lambda e: e["event"] == "Server Step" and step_of(e) == step, web=False)
    visitor.checkpoint()

    events = visitor.events()
    [pageview] = [
        e for e in web_events(events, since=step, until=step) if e["event"] == "$pageview"
    ]
    [served] = server_events(events, "Server Step")
    print(f"\n$pageview: {props(pageview)}\nServer Step: {props(served)}")
    assert props(served)["$session_id"] == props(pageview)["$session_id"]
    assert props(served)["$window_id"] == props(pageview)["$window_id"]
    assert distinct_id(served) == visitor.anonymous_id() == distinct_id(pageview)
    assert props(served)["$request_path"] == "/server-step"


# ---------------------------------------------------------------------------
# The first-party proxy: PostHog reachable only through the site's own origin


@pytest.fixture(scope="session", params=SERVER_KINDS)
def proxied_server(
    request: pytest.FixtureRequest, sink: Sink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The site under one server, with POSTHOG_IDENTITY_PROXY_PATH=/ingest: the
    snippet loads posthog-js from the site, which forwards to the sink."""
    kind = str(request.param)
    env = site_environment(sink, "")
    del env["POSTHOG_IDENTITY_SCRIPT_URL"]
    env["POSTHOG_IDENTITY_PROXY_PATH"] = "/ingest"
    yield from site(kind, env, sink, tmp_path_factory.mktemp(f"e2e-proxied-{kind}"))


def test_through_the_proxy_pageviews_autocapture_and_flags_arrive_with_posthog_blocked(
    proxied_server: Server, new_visitor: Callable[..., Visitor]
) -> None:
    visitor = new_visitor(proxied_server)
    to_posthog: list[str] = []

    def blocked(route: Route) -> None:
        to_posthog.append(route.request.url)
        route.abort()

    # As an ad blocker would: PostHog's own origin is unreachable from the page.
    visitor.context.route(f"{visitor.sink.url}/**", blocked)
    step = visitor.visit("/capture")
    anonymous = visitor.anonymous_id()
    visitor.page.evaluate(
        "document.body.insertAdjacentHTML('beforeend', '<button id=\"buy\">Buy</button>')"
    )
    visitor.page.click("#buy")
    visitor.wait(lambda e: e["event"] == "$autocapture" and step_of(e) == step, web=True)
    # The sink's project has no flags, so posthog-js skips /flags at load; ask.
    visitor.page.evaluate("window.posthog.reloadFeatureFlags()")
    visitor.checkpoint()
    deadline = time.monotonic() + EVENT_TIMEOUT
    while not (flags := [r for r in visitor.sink.flag_requests() if anonymous in str(r)]):
        assert time.monotonic() < deadline, "posthog-js's /flags did not arrive through the proxy"
        visitor.page.wait_for_timeout(WAIT_SLICE * 1000)

    browser = web_events(visitor.events())
    assert {"$pageview", "$autocapture"} <= {e["event"] for e in browser}
    assert {distinct_id(e) for e in browser} == {anonymous}
    assert {props(e).get("$lib_custom_api_host") for e in browser} == {"/ingest"}
    assert flags
    assert to_posthog == [], "the page asked PostHog's origin directly"
