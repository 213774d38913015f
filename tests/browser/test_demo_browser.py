"""The demo offline, in Chromium: nothing but 127.0.0.1 answers, as on a train.

With `--posthog-js` (the npm-pinned posthog-js the other browser tests run) the
demo's sink serves posthog-js, so the browser's own events reach the Events page;
without it, posthog-js cannot load from PostHog's CDN and every page says so.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, Route, expect

from tests.helpers.browser import POSTHOG_JS
from tests.helpers.demo import Demo, demo_environment

#: Where the Events page's screenshot goes besides the test's own directory, if set.
SCREENSHOT_DIR = "POSTHOG_IDENTITY_SCREENSHOT_DIR"
TIMEOUT_MS = 20_000


@pytest.fixture
def offline(browser: Browser) -> Iterator[tuple[BrowserContext, list[str]]]:
    """A fresh profile with no route off the machine; the list names what was refused."""
    refused: list[str] = []
    major = browser.version.split(".")[0]
    context = browser.new_context(
        # posthog-js drops events from a user agent that says HeadlessChrome.
        user_agent="Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        f"Chrome/{major}.0.0.0 Safari/537.36",
        viewport={"width": 1100, "height": 900},
    )

    def local_only(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", local_only)
    context.set_default_timeout(TIMEOUT_MS)
    yield context, refused
    context.close()


def run_demo(*options: str) -> Demo:
    return Demo(demo_environment(), *options)


def events_row(page: Page, event: str, source: str) -> Locator:
    return (
        page.locator("#groups tr")
        .filter(has=page.locator("td", has_text=re.compile(rf"^{re.escape(event)}$")))
        .filter(has=page.locator("td", has_text=re.compile(rf"^{source}$")))
    )


def test_offline_the_events_page_shows_the_browsers_pageview_with_posthog_js_served_locally(
    offline: tuple[BrowserContext, list[str]], tmp_path: Path
) -> None:
    context, refused = offline
    demo = run_demo("--posthog-js", str(POSTHOG_JS))
    try:
        page = context.new_page()
        page.goto(f"{demo.url}/")
        page.goto(f"{demo.url}/events")

        expect(events_row(page, "$pageview", "browser").first).to_be_visible()
        expect(page.locator("#posthog-js-missing")).to_be_hidden()
    finally:
        assert demo.stop() == 0

    assert not [url for url in refused if "posthog" in url], "posthog-js came from 127.0.0.1"


def test_offline_a_login_shows_the_browsers_identify_under_the_user(
    offline: tuple[BrowserContext, list[str]], tmp_path: Path
) -> None:
    context, _ = offline
    demo = run_demo("--posthog-js", str(POSTHOG_JS))
    try:
        page = context.new_page()
        page.goto(f"{demo.url}/")
        page.goto(f"{demo.url}/login")
        page.fill("input[name=name]", "ada")
        page.click("button")
        page.wait_for_url(f"{demo.url}/")
        page.goto(f"{demo.url}/page")
        page.goto(f"{demo.url}/events")

        ada = page.locator("#groups h3", has_text=re.compile("^ada$"))
        expect(ada).to_be_visible()
        expect(events_row(page, "$identify", "browser").first).to_be_visible()
        expect(events_row(page, "$create_alias", "server").first).to_be_visible()
        shot = page.screenshot(path=tmp_path / "demo-offline-events.png", full_page=True)
        if os.environ.get(SCREENSHOT_DIR):
            (Path(os.environ[SCREENSHOT_DIR]) / "demo-offline-events.png").write_bytes(shot)
    finally:
        assert demo.stop() == 0


def test_offline_without_posthog_js_every_page_says_in_one_line_that_it_did_not_load(
    offline: tuple[BrowserContext, list[str]],
) -> None:
    context, refused = offline
    demo = run_demo()
    try:
        page = context.new_page()
        page.goto(f"{demo.url}/")

        missing = page.locator("#posthog-js-missing")
        expect(missing).to_be_visible()
        text = missing.inner_text()
        visible_lines = page.locator("p.note:visible", has_text="did not load")
        assert visible_lines.count() == 1
    finally:
        assert demo.stop() == 0

    assert text.startswith(
        "posthog-js did not load from https://us-assets.i.posthog.com/static/array.js"
    )
    assert "--posthog-js DIR" in text
    assert "https://us-assets.i.posthog.com/static/array.js" in refused
