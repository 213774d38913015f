"""What the browser tests need: Chromium, posthog-js from npm, Playwright, a sink, servers.

Outside CI a missing piece skips every test here with how to install it; in CI
(``CI=true``) it fails them instead, so a broken set-up cannot pass as green.

- One `Sink` for the session serves posthog-js's ``dist/`` at ``/static/`` and
  receives every event: the browser's and the servers'.
- One Chromium (Debian's, through Playwright's ``executable_path``; never
  ``playwright install``) for the session; each test gets a fresh context,
  which is a fresh profile: no cookies, no storage.
- One server per kind for the session: `tests.sites.browser` under gunicorn
  (WSGI) and uvicorn (ASGI), started with `tests.helpers.servers`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from posthog_identity.testing import Sink
from tests.helpers.servers import Server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Playwright
from tests.helpers.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    POSTHOG_JS_DIST,
    SERVER_KINDS,
    missing_requirements,
    site,
    site_environment,
)


@pytest.fixture(scope="session", autouse=True)
def _requirements() -> None:
    problems = missing_requirements()
    if not problems:
        return
    message = "browser tests cannot run:\n  - " + "\n  - ".join(problems)
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def sink(_requirements: None) -> Iterator[Sink]:
    with Sink(static_dir=POSTHOG_JS_DIST) as running:
        yield running


@pytest.fixture(scope="package")
def playwright(_requirements: None) -> Iterator[Playwright]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    chromium = playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
    )
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture(scope="session", params=SERVER_KINDS)
def server(
    request: pytest.FixtureRequest, sink: Sink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The site under one server, loading posthog-js from the sink."""
    kind = str(request.param)
    env = site_environment(sink, f"{sink.url}/static/array.js")
    yield from site(kind, env, sink, tmp_path_factory.mktemp(f"e2e-{kind}"))
