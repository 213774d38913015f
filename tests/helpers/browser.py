"""What the browser tests share: Chromium's path and flags, posthog-js installed by npm
(pinned in `tests/browser/package-lock.json`), and the browser site under a real server.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from posthog_identity.testing import Sink
from tests.helpers.project import ROOT
from tests.helpers.servers import Server, server_environment, serving, start_app

if TYPE_CHECKING:
    pass


POSTHOG_JS_VERSION = "1.449.2"


POSTHOG_JS = ROOT / "tests" / "browser" / "node_modules" / "posthog-js"


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


def site_environment(sink: Sink, script_url: str) -> dict[str, str]:
    env = server_environment(sink.url)
    env["POSTHOG_IDENTITY_SCRIPT_URL"] = script_url
    env["POSTHOG_IDENTITY_INIT_OPTIONS"] = json.dumps(INIT_OPTIONS)
    return env


def site(
    kind: str, env: dict[str, str], sink: Sink, log_dir: Path, module: str = "tests.sites.browser"
) -> Iterator[Server]:
    """A fixture's body: `module` (`tests.sites.browser` unless told) under `kind`, checked
    and stopped by `tests.helpers.servers.serving`."""
    return serving(start_app(kind, sink, log_dir, module, env))
