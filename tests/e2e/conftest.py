"""What the browser tests need: Chromium, posthog-js from npm, Playwright, a sink, servers.

Outside CI a missing piece skips every test here with how to install it; in CI
(``CI=true``) it fails them instead, so a broken set-up cannot pass as green.

- One `Sink` for the session serves posthog-js's ``dist/`` at ``/static/`` and
  receives every event: the browser's and the servers'.
- One Chromium (Debian's, through Playwright's ``executable_path``; never
  ``playwright install``) for the session; each test gets a fresh context,
  which is a fresh profile: no cookies, no storage.
- One server per kind for the session: `tests.e2e.site` under gunicorn
  (WSGI) and uvicorn (ASGI), started with `tests.servers`.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from posthog_identity.testing import Sink
from tests.servers import Server, server_environment, serving, start_app

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Playwright

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
POSTHOG_JS_VERSION = "1.449.2"
POSTHOG_JS = HERE / "node_modules" / "posthog-js"
POSTHOG_JS_DIST = POSTHOG_JS / "dist"
CHROMIUM = Path(os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # navigator.webdriver stays false: posthog-js drops events from automated browsers.
    "--disable-blink-features=AutomationControlled",
]
SERVER_KINDS = ["gunicorn", "uvicorn"]
#: posthog-js sends each event at once instead of batching them for a few seconds.
INIT_OPTIONS = {"request_batching": False}


def missing_requirements() -> list[str]:
    """What this machine lacks to run the browser tests, each with how to install it."""
    problems = []
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        problems.append(
            f"Chromium is not installed at {CHROMIUM}: `apt-get install -y chromium`"
            " (or point E2E_CHROMIUM at a Chromium binary)"
        )
    package = POSTHOG_JS / "package.json"
    version = json.loads(package.read_text())["version"] if package.is_file() else None
    if version is None or not (POSTHOG_JS_DIST / "array.js").is_file():
        problems.append("posthog-js is not installed: `npm ci --prefix tests/e2e`")
    elif version != POSTHOG_JS_VERSION:
        problems.append(
            f"posthog-js {version} is installed, {POSTHOG_JS_VERSION} is pinned:"
            " `npm ci --prefix tests/e2e`"
        )
    if importlib.util.find_spec("playwright") is None:
        problems.append(
            "Playwright for Python is not installed: `pip install playwright`"
            " (not `playwright install`: the tests drive the system Chromium)"
        )
    return problems


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


def site_environment(sink: Sink, script_url: str) -> dict[str, str]:
    env = server_environment(sink.url)
    env["POSTHOG_IDENTITY_SCRIPT_URL"] = script_url
    env["POSTHOG_IDENTITY_INIT_OPTIONS"] = json.dumps(INIT_OPTIONS)
    return env


def site(
    kind: str, env: dict[str, str], sink: Sink, log_dir: Path, module: str = "tests.e2e.site"
) -> Iterator[Server]:
    """A fixture's body: `module` (`tests.e2e.site` unless told) under `kind`, checked
    and stopped by `tests.servers.serving`."""
    return serving(start_app(kind, sink, log_dir, module, env))


@pytest.fixture(scope="session", params=SERVER_KINDS)
def server(
    request: pytest.FixtureRequest, sink: Sink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The site under one server, loading posthog-js from the sink."""
    kind = str(request.param)
    env = site_environment(sink, f"{sink.url}/static/array.js")
    yield from site(kind, env, sink, tmp_path_factory.mktemp(f"e2e-{kind}"))
