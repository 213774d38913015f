"""Consent in a real Chromium with the real posthog-js: what the browser keeps and sends.

The site (`tests.sites.browser`) runs under gunicorn and uvicorn with
``POSTHOG_IDENTITY_CONSENT=opt-in``; a cookie banner is played by the test,
which sets the consent cookie the way a banner's script would. The site is
reached as ``www.consent.test`` (mapped to 127.0.0.1), so posthog-js puts its
cookie on the parent domain ``.consent.test``, as on a real site, and the
snippet must find it there too.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from tests.helpers.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    SERVER_KINDS,
    site,
    site_environment,
)
from tests.helpers.project import API_KEY

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Playwright

    from posthog_identity.testing import Sink
    from tests.helpers.servers import Server

HOST = "www.consent.test"
CONSENT_COOKIE = "ph_consent"
IDENTITY_COOKIE = "ph_identity"
USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0.0.0 Safari/537.36 PHIdentityE2E/{tag}"
)
#: How long a browser that still captured would take to show it (events go out at once).
QUIET = 1.5


def _site(
    kind: str, mode: str, sink: Sink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    env = site_environment(sink, f"{sink.url}/static/array.js")
    env["POSTHOG_IDENTITY_CONSENT"] = mode
    yield from site(kind, env, sink, tmp_path_factory.mktemp(f"consent-{mode}-{kind}"))


@pytest.fixture(scope="module", params=SERVER_KINDS)
def opt_in_site(
    request: pytest.FixtureRequest, sink: Sink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    yield from _site(str(request.param), "opt-in", sink, tmp_path_factory)


@pytest.fixture(scope="module")
def opt_out_site(sink: Sink, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _site("uvicorn", "opt-out", sink, tmp_path_factory)


@pytest.fixture(scope="module")
def chromium(playwright: Playwright) -> Iterator[Browser]:
    """The conftest's Chromium, plus a name for the site with a parent domain."""
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {HOST} 127.0.0.1"],
    )
    try:
        yield browser
    finally:
        browser.close()


class Visitor:
    """One fresh browser profile on the site, tagged so its events can be told apart."""

    def __init__(self, browser: Browser, server: Server, **options: Any) -> None:
        self.tag = uuid.uuid4().hex[:12]
        self.base = f"http://{HOST}:{urlsplit(server.url).port}"
        self.sink = server.sink
        self.context: BrowserContext = browser.new_context(
            user_agent=USER_AGENT.format(tag=self.tag), **options
        )
        self.page: Page = self.context.new_page()
        self.sent: list[str] = []  # posthog-js event requests, in order
        self.page.on("request", self._record)

    def _record(self, request: Any) -> None:
        if urlsplit(request.url).path in ("/e/", "/i/v0/e/", "/capture/", "/batch/"):
            self.sent.append(request.url)

    def visit(self, path: str) -> None:
        self.page.goto(self.base + path)
        self.page.wait_for_function("() => window.posthog && window.posthog.__loaded === true")

    def banner(self, value: str) -> None:
        """What a cookie banner does: record the choice in the consent cookie."""
        self.context.add_cookies([{"name": CONSENT_COOKIE, "value": value, "url": self.base}])

    def whoami(self) -> dict[str, Any]:
        text = self.page.evaluate("() => fetch('/whoami').then((r) => r.text())")
        identity = json.loads(text)["identity"]
        assert isinstance(identity, dict)
        return identity

    def stored(self) -> dict[str, list[str]]:
        """Every cookie (any domain) and web storage key but the banner's own cookie."""
        storage = self.page.evaluate(
            "() => ({local: Object.keys(localStorage), session: Object.keys(sessionStorage)})"
        )
        cookies = sorted(
            f"{c['name']}@{c['domain']}"
            for c in self.context.cookies()
            if c["name"] not in (CONSENT_COOKIE, "e2e_session")
        )
        return {"cookies": cookies, "local": storage["local"], "session": storage["session"]}

    def browser_events(self, event: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.sink.events(event)
            if self.tag in str(e.get("properties", {}).get("$raw_user_agent", ""))
        ]

    def wait_for_browser_event(self, event: str, step: str) -> dict[str, Any]:
        def seen(events: list[dict[str, Any]]) -> bool:
            return any(self._is(e, step) for e in events)

        self.sink.wait_for(seen, event=event)
        return next(e for e in self.browser_events(event) if self._is(e, step))

    def _is(self, event: dict[str, Any], step: str) -> bool:
        properties = event.get("properties", {})
        return self.tag in str(properties.get("$raw_user_agent", "")) and (
            f"step={step}" in str(properties.get("$current_url", ""))
        )

    def server_event(self, step: str) -> dict[str, Any]:
        def seen(events: list[dict[str, Any]]) -> bool:
            return any(self._server(e, step) for e in events)

        self.sink.wait_for(seen, event="Server Page Viewed")
        return next(e for e in self.sink.events("Server Page Viewed") if self._server(e, step))

    def _server(self, event: dict[str, Any], step: str) -> bool:
        properties = event["properties"]
        return bool(properties.get("e2e_browser") == self.tag and properties.get("step") == step)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visitor(chromium: Browser, opt_in_site: Server) -> Iterator[Visitor]:
    visiting = Visitor(chromium, opt_in_site)
    yield visiting
    visiting.close()


def _distinct_id(event: dict[str, Any]) -> Any:
    return event.get("distinct_id") or event.get("properties", {}).get("distinct_id")


NOTHING_STORED: dict[str, list[str]] = {"cookies": [], "local": [], "session": []}


def test_without_consent_the_browser_keeps_nothing_and_no_id_is_shared(visitor: Visitor) -> None:
    visitor.visit("/capture?step=none")
    visitor.page.click("#title")  # an autocapture, which must not store anything either
    pageview = visitor.wait_for_browser_event("$pageview", "none")
    server = visitor.server_event("none")
    assert visitor.stored() == NOTHING_STORED

    identity = visitor.whoami()
    assert identity["user_id"] is None
    assert _distinct_id(server) != _distinct_id(pageview), "no id goes from server to browser"
    assert _distinct_id(server) != identity["distinct_id"], "a random id per request"
    assert server["properties"]["$process_person_profile"] is False
    assert visitor.page.evaluate("() => posthog.config.persistence") == "memory"

    visitor.visit("/capture?step=again")
    again = visitor.wait_for_browser_event("$pageview", "again")
    assert _distinct_id(again) != _distinct_id(pageview), "nothing carried between pages"
    assert visitor.stored() == NOTHING_STORED


def test_grant_starts_identity_and_revoke_clears_the_browser(visitor: Visitor) -> None:
    visitor.visit("/capture?step=before")
    assert visitor.stored() == NOTHING_STORED

    visitor.banner("granted")
    visitor.visit("/capture?step=granted")
    anonymous = visitor.whoami()["anonymous_id"]
    assert visitor.page.evaluate("() => posthog.get_distinct_id()") == anonymous
    assert _distinct_id(visitor.wait_for_browser_event("$pageview", "granted")) == anonymous
    assert _distinct_id(visitor.server_event("granted")) == anonymous
    stored = visitor.stored()
    token = f"ph_{API_KEY}_posthog"
    assert f"{IDENTITY_COOKIE}@{HOST}" in stored["cookies"]
    assert f"{token}@.consent.test" in stored["cookies"], "posthog-js uses the parent domain"
    assert token in stored["local"]

    user = f"user-{visitor.tag}"
    visitor.page.goto(f"{visitor.base}/login?next=/capture%3Fstep%3Dsigned-in")
    visitor.page.fill("#name", user)
    visitor.page.click("#login")
    visitor.page.wait_for_url("**/capture?step=signed-in")
    visitor.page.wait_for_function("() => window.posthog && window.posthog.__loaded === true")
    visitor.page.wait_for_function(f"() => posthog.get_distinct_id() === {json.dumps(user)}")

    visitor.banner("denied")
    before_revoke = len(visitor.sent)
    visitor.visit("/capture?step=revoked")
    assert visitor.stored() == NOTHING_STORED, "identity cookie deleted, PostHog storage cleared"
    assert visitor.page.evaluate("() => posthog.has_opted_out_capturing()") is True
    server = visitor.server_event("revoked")
    assert _distinct_id(server) not in (user, anonymous)
    assert server["properties"]["$process_person_profile"] is False

    visitor.page.evaluate("() => posthog.capture('after revoke')")
    visitor.page.click("#title")
    visitor.visit("/?step=after")
    visitor.page.wait_for_load_state("networkidle")
    time.sleep(QUIET)
    assert visitor.sent[before_revoke:] == [], "posthog-js sends nothing after the refusal"
    revoked = [e for e in visitor.browser_events() if "step=revoked" in str(e["properties"])]
    assert revoked == []
    assert visitor.browser_events("after revoke") == []
    assert visitor.stored() == NOTHING_STORED

    visitor.banner("granted")
    visitor.visit("/capture?step=granted-again")
    identity = visitor.whoami()
    assert identity["anonymous_id"] != anonymous, "a new anonymous id: the old one is forgotten"
    assert identity["user_id"] == user, "the site's own session still signs them in"
    visitor.page.wait_for_function(f"() => posthog.get_distinct_id() === {json.dumps(user)}")


def test_gpc_is_a_refusal_in_opt_out_mode(chromium: Browser, opt_out_site: Server) -> None:
    tracked = Visitor(chromium, opt_out_site)
    refusing = Visitor(chromium, opt_out_site, extra_http_headers={"Sec-GPC": "1"})
    try:
        tracked.visit("/capture?step=opt-out")
        assert IDENTITY_COOKIE in "".join(tracked.stored()["cookies"])
        assert _distinct_id(tracked.server_event("opt-out")) == tracked.whoami()["anonymous_id"]

        refusing.visit("/capture?step=gpc")
        refusing.page.wait_for_load_state("networkidle")
        time.sleep(QUIET)
        assert refusing.stored() == NOTHING_STORED
        assert refusing.sent == []
        assert refusing.server_event("gpc")["properties"]["$process_person_profile"] is False
    finally:
        tracked.close()
        refusing.close()
