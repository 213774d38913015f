"""A single-page app on one origin, its JSON API on another: the API's events join
the browser's own anonymous id and session.

The page is ``examples/spa/index.html`` with the real posthog-js (its
``tracing_headers`` listing the API's host), served by a plain static server
(`tests.helpers.spa`); the API is `tests.sites.spa` under uvicorn (FastAPI) and
gunicorn (Flask). Two set-ups:

- cross-site: the page on ``http://localhost:P1``, the API on
  ``http://127.0.0.1:P2``; fetch without credentials, a bearer token after login;
- same-site: the page on ``http://127.0.0.1:P1``; fetch with
  ``credentials: "include"``, the API's session cookie after login.

Each scenario runs with our middleware and with posthog-python's own
(``PosthogASGIMiddleware`` under uvicorn, ``PosthogFlaskIntegration`` under
gunicorn) as a reference: the peer takes ``X-POSTHOG-DISTINCT-ID`` as it
comes, so it proves the harness. After login the page calls
``posthog.identify(user)`` as a real SPA does, so the peer's events carry the
user too; only ours also knows the user from the API's own sign-in.

The example's own API (``examples/spa/api.py`` under uvicorn, as its docs run
it) goes through the whole story once, cross-site.

Events are read at the session's sink: posthog-js's (``$lib`` "web", tagged by
the browser's user agent) and the API's captures (tagged in ``e2e_browser``,
or carrying that user agent in ``$user_agent``).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import pytest

from tests.helpers.servers import (
    Server,
    check_errors,
    server_environment,
    serving,
    start_app,
    start_process,
)
from tests.helpers.spa import static_site
from tests.helpers.wire import distinct_id
from tests.sites.spa import API_CALLED

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Route

    from posthog_identity.testing import Sink

EVENT_TIMEOUT = 10.0
WAIT_SLICE = 0.02
ALIAS = "$create_alias"
IDENTIFY = "$identify"
#: Events that merge two distinct ids into one person, and the property naming the other id.
LINKS = {ALIAS: "alias", IDENTIFY: "$anon_distinct_id", "$merge_dangerously": "alias"}
#: Only these hosts exist for the browser: nothing leaves the machine.
LOCAL_HOSTS = {"127.0.0.1", "localhost"}

Event = dict[str, Any]


def props(event: Event) -> dict[str, Any]:
    found = event.get("properties")
    return found if isinstance(found, dict) else {}


def is_web(event: Event) -> bool:
    return props(event).get("$lib") == "web"


#: What `shown` keeps of an event's properties.
SHOWN = (
    "$lib",
    "$session_id",
    "$window_id",
    "$current_url",
    "$request_path",
    "$process_person_profile",
)


def shown(event: Event) -> str:
    """One event as the sink received it: its name, distinct id and identifying properties."""
    kept = {name: props(event)[name] for name in SHOWN if name in props(event)}
    return json.dumps({"event": event["event"], "distinct_id": distinct_id(event), **kept})


def links(events: list[Event]) -> list[tuple[str, str]]:
    """(distinct id, merged-in id) of every event that merges two ids."""
    found = []
    for event in events:
        other = props(event).get(LINKS.get(event["event"], ""))
        if isinstance(other, str):
            found.append((str(distinct_id(event)), other))
    return found


# ---------------------------------------------------------------------------
# Servers: one static server for the page, one API per server kind and middleware


@dataclass(frozen=True)
class Setup:
    """Where the page is, and how it calls the API."""

    name: str
    page_host: str  # the API is always on 127.0.0.1
    credentials: str


CROSS_SITE = Setup("cross-site", "localhost", "omit")
SAME_SITE = Setup("same-site", "127.0.0.1", "include")
SETUPS = [CROSS_SITE, SAME_SITE]

APIS = [("uvicorn", "ours"), ("gunicorn", "ours"), ("uvicorn", "peer"), ("gunicorn", "peer")]


@pytest.fixture(scope="module")
def page_port(sink: Sink, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    yield from static_site(
        sink, tmp_path_factory.mktemp("spa-page"), tmp_path_factory.mktemp("spa-static-log")
    )


@dataclass(frozen=True)
class Api:
    server: Server
    middleware: str  # "ours", "peer", or "example" (ours, as examples/spa/api.py wires it)
    #: What the API captures on ``GET /api/hello``.
    called: str = API_CALLED


@pytest.fixture(scope="module", params=APIS, ids=[f"{kind}-{which}" for kind, which in APIS])
def api(
    request: pytest.FixtureRequest,
    sink: Sink,
    page_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Api]:
    kind, middleware = request.param
    env = server_environment(sink.url)
    env["SPA_SITE_MIDDLEWARE"] = middleware
    env["SPA_ORIGINS"] = ",".join(f"http://{host}:{page_port}" for host in sorted(LOCAL_HOSTS))
    log_dir = tmp_path_factory.mktemp(f"spa-api-{kind}-{middleware}")
    for server in serving(start_app(kind, sink, log_dir, "tests.sites.spa", env)):
        yield Api(server, middleware)


# ---------------------------------------------------------------------------
# The visitor: one fresh browser profile on the page


@dataclass
class Visitor:
    api: Api
    setup: Setup
    page: Page
    context: BrowserContext
    tag: str
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    #: The API's answers to "Call the API", as the page shows them.
    answers: list[Any] = field(default_factory=list)

    @property
    def sink(self) -> Sink:
        return self.api.server.sink

    def open(self, page_port: int) -> None:
        query = urlencode({"api": self.api.server.url, "credentials": self.setup.credentials})
        self.page.goto(f"http://{self.setup.page_host}:{page_port}/index.html?{query}")
        self.page.wait_for_selector("body[data-ready=true]")
        self.wait(lambda e: e["event"] == "$pageview" and is_web(e))

    def browser_id(self) -> str:
        return str(self.page.evaluate("posthog.get_distinct_id()"))

    def session_id(self) -> str:
        return str(self.page.evaluate("posthog.get_session_id()"))

    def call(self) -> Event:
        """Click "Call the API", wait until the page shows its answer (kept in
        `answers`); return the API's capture of that call."""
        before = len(self.api_events())
        with self.page.expect_response(
            lambda r: urlsplit(r.url).path == "/api/hello" and r.request.method == "GET"
        ) as reply:
            self.page.click("#call")
        answer = reply.value.json()
        self.answers.append(answer)
        self.page.wait_for_function(
            "expected => document.getElementById('answer').textContent"
            " === JSON.stringify(expected)",
            arg=answer,
        )
        self.wait(lambda e: e["event"] == self.api.called and not is_web(e), count=before + 1)
        return self.api_events()[before]

    def login(self, name: str) -> None:
        self.page.fill("#name", name)
        self.page.click("#login")
        self.page.wait_for_selector(f"text=Signed in as {name}")
        # The page calls posthog.identify(name): its $identify has arrived.
        self.wait(lambda e: e["event"] == IDENTIFY and is_web(e) and distinct_id(e) == name)

    def logout(self) -> None:
        self.page.click("#logout")
        self.page.wait_for_selector("text=Not signed in")

    def wait(self, predicate: Callable[[Event], bool], count: int = 1) -> None:
        """Until `count` of this browser's events match; the page runs in between."""
        deadline = time.monotonic() + EVENT_TIMEOUT
        while sum(map(predicate, self.events())) < count:
            assert time.monotonic() < deadline, f"timed out waiting:\n{self.report()}"
            # Playwright serves the page's routes only inside its own calls.
            self.page.wait_for_timeout(WAIT_SLICE * 1000)

    def events(self) -> list[Event]:
        """This browser's events (posthog-js's and the API's), in arrival order."""

        def mine(event: Event) -> bool:
            if is_web(event):
                return self.tag in str(props(event).get("$raw_user_agent", ""))
            # The sites tag their captures; the example's carry the request's user agent.
            return props(event).get("e2e_browser") == self.tag or self.tag in str(
                props(event).get("$user_agent", "")
            )

        return [e for e in self.sink.events() if mine(e)]

    def api_events(self) -> list[Event]:
        # One posthog client per API process sends them in order.
        return [e for e in self.events() if e["event"] == self.api.called and not is_web(e)]

    def pageview(self) -> Event:
        [found] = [e for e in self.events() if e["event"] == "$pageview" and is_web(e)]
        return found

    def report(self) -> str:
        lines = [f"=== {self.setup.name} {self.api.server.kind}-{self.api.middleware}"]
        for event in self.events():
            p = props(event)
            lines.append(
                f"  {'browser' if is_web(event) else 'api':7} {event['event']:16} "
                f"{distinct_id(event)} session={p.get('$session_id')}"
            )
        lines.extend(f"  console {message}" for message in self.console)
        lines.extend(f"  page error {error}" for error in self.errors)
        return "\n".join(lines)


def user_agent(browser: Browser, tag: str) -> str:
    """A desktop Chrome user agent (posthog-js drops ``HeadlessChrome``), tagged."""
    major = browser.version.split(".")[0]
    return (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        f"Chrome/{major}.0.0.0 Safari/537.36 PHIdentityE2E/{tag}"
    )


def visiting(browser: Browser, api: Api, setup: Setup, page_port: int) -> Iterator[Visitor]:
    """A fixture's body: a fresh profile with the page open and its $pageview arrived;
    afterwards, its story printed and the API's log checked."""
    tag = uuid.uuid4().hex
    context = browser.new_context(user_agent=user_agent(browser, tag))
    context.set_default_timeout(EVENT_TIMEOUT * 1000)
    visitor = Visitor(api, setup, context.new_page(), context, tag)
    log_start = api.server.log.stat().st_size

    def local_only(route: Route) -> None:
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            visitor.blocked.append(route.request.url)
            route.abort()

    context.route("**/*", local_only)
    visitor.page.on("console", lambda m: visitor.console.append(f"{m.type}: {m.text}"))
    visitor.page.on("pageerror", lambda error: visitor.errors.append(str(error)))
    try:
        visitor.open(page_port)
        yield visitor
    finally:
        context.close()
        print("\n" + visitor.report())
    check_errors(api.server, "during the test", since=log_start)
    api.server.log_size_at_teardown = api.server.log.stat().st_size
    assert visitor.blocked == [], "the page asked for something off this machine"
    assert visitor.errors == []


@pytest.fixture(params=SETUPS, ids=[setup.name for setup in SETUPS])
def visitor(
    request: pytest.FixtureRequest, browser: Browser, api: Api, page_port: int
) -> Iterator[Visitor]:
    yield from visiting(browser, api, request.param, page_port)


def new_user() -> str:
    return f"user-{uuid.uuid4()}"


# ---------------------------------------------------------------------------
# Scenarios


def test_anonymous_api_events_carry_the_browsers_id_and_session(visitor: Visitor) -> None:
    first = visitor.call()
    second = visitor.call()

    pageview = visitor.pageview()
    print("\nAs the sink received them:", *map(shown, [pageview, first, second]), sep="\n")
    browser_id = distinct_id(pageview)
    assert browser_id == visitor.browser_id()
    assert [distinct_id(first), distinct_id(second)] == [browser_id, browser_id]
    session = props(pageview)["$session_id"]
    assert [props(first)["$session_id"], props(second)["$session_id"]] == [session, session]


def test_after_login_api_events_carry_the_user(visitor: Visitor) -> None:
    visitor.call()
    user = new_user()
    visitor.login(user)
    after = visitor.call()

    browser_id = distinct_id(visitor.pageview())
    assert distinct_id(after) == user
    assert props(after)["$session_id"] == visitor.session_id()
    # Whatever links the user (posthog-js's $identify, our login link) links
    # it to the browser's own anonymous id, never to an id the browser never had.
    merged = links(visitor.events() + visitor.sink.events(event=ALIAS, distinct_id=user))
    assert merged
    assert set(merged) == {(user, browser_id)}


def test_after_logout_and_reset_api_events_carry_the_browsers_new_id(visitor: Visitor) -> None:
    visitor.call()
    user = new_user()
    visitor.login(user)
    visitor.call()
    old_session = visitor.session_id()

    visitor.logout()  # and posthog.reset()
    after = visitor.call()

    new_id, new_session = visitor.browser_id(), visitor.session_id()
    assert new_id not in (user, distinct_id(visitor.pageview()))
    assert distinct_id(after) == new_id
    assert props(after)["$session_id"] == new_session != old_session
    # Nothing links the user to the next visitor's id.
    everything = visitor.sink.events()
    assert [pair for pair in links(everything) if new_id in pair] == []


# ---------------------------------------------------------------------------
# The example as shipped: examples/spa/api.py under uvicorn, the page on another site


@pytest.fixture(scope="module")
def example_api(
    sink: Sink, page_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    env = server_environment(sink.url)
    env["SPA_ORIGINS"] = f"http://{CROSS_SITE.page_host}:{page_port}"

    def command(port: int) -> list[str]:
        return [
            *(sys.executable, "-m", "uvicorn", "examples.spa.api:app"),
            *("--host", "127.0.0.1", "--port", str(port), "--lifespan", "on"),
        ]

    started = start_process("uvicorn", command, env, tmp_path_factory.mktemp("spa-example"))
    server = Server("uvicorn", started.url, sink, started.process, started.log)
    for running in serving(server):
        yield Api(running, "example", called="api called")


@pytest.fixture
def example_visitor(browser: Browser, example_api: Api, page_port: int) -> Iterator[Visitor]:
    yield from visiting(browser, example_api, CROSS_SITE, page_port)


def test_the_example_joins_the_browsers_id_then_the_user_then_the_browsers_next_id(
    example_visitor: Visitor,
) -> None:
    visitor = example_visitor
    anonymous = visitor.call()
    user = new_user()
    visitor.login(user)
    signed_in = visitor.call()
    visitor.logout()
    after = visitor.call()

    browser_id = distinct_id(visitor.pageview())
    next_id = visitor.browser_id()
    assert next_id not in (browser_id, user)
    assert [distinct_id(anonymous), distinct_id(signed_in), distinct_id(after)] == [
        browser_id,
        user,
        next_id,
    ]
    # The page shows what the API answered it captured with: the same ids.
    assert [answer["distinct_id"] for answer in visitor.answers] == [browser_id, user, next_id]
