"""The single-page app of ``examples/spa/``, served as a real SPA is: static files on
their own origin, by a plain static server (``python -m http.server``), with a
``config.js`` of the test's own in place of the example's.

The page reads its API's URL and ``credentials`` mode from its query string
(``?api=...&credentials=omit|include``), so one static server serves every
API a test module starts; posthog-js and its events go to the sink.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from posthog_identity.testing import Sink
from tests.helpers.browser import INIT_OPTIONS
from tests.helpers.project import API_KEY, ROOT
from tests.helpers.servers import (
    check_stopped,
    server_environment,
    start_process,
    stop_process,
    wait_until_ready,
)

EXAMPLE = ROOT / "examples" / "spa"
#: What ``python -m http.server`` prints once it has bound its port.
STATIC_LISTENING = "Serving HTTP on 127.0.0.1 port {port} "


def page_config(sink: Sink) -> str:
    """The page's ``config.js``: the API from the query string, PostHog at the sink."""
    fixed = {
        "posthogKey": API_KEY,
        "posthogHost": sink.url,
        # The bundle with the tracing-headers extension, as the example loads it.
        "posthogScript": f"{sink.url}/static/array.full.js",
        "posthogOptions": INIT_OPTIONS,
    }
    return (
        "const query = new URLSearchParams(location.search);\n"
        f"window.SPA_CONFIG = Object.assign({json.dumps(fixed)}, {{\n"
        '  api: query.get("api"),\n'
        '  credentials: query.get("credentials") || "omit",\n'
        "});\n"
    )


def static_site(sink: Sink, directory: Path, log_dir: Path) -> Iterator[int]:
    """A fixture's body: the example's ``index.html`` and a test ``config.js`` in
    `directory`, served by ``python -m http.server`` on 127.0.0.1; yields its port."""
    shutil.copy(EXAMPLE / "index.html", directory / "index.html")
    (directory / "config.js").write_text(page_config(sink), encoding="utf-8")

    def command(port: int) -> list[str]:
        return [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]

    started = start_process(
        "http.server",
        lambda port: [*command(port), "--directory", str(directory)],
        server_environment(sink.url),
        log_dir,
        wait=partial(
            wait_until_ready, "http.server", path="/config.js", listening=STATIC_LISTENING
        ),
    )
    try:
        yield started.port
    finally:
        killed = stop_process(started.process)
    check_stopped("http.server", started.log, killed)
