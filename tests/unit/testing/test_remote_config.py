"""posthog-js's remote config: `config.js` and its JSON twin, every product off, and
`hasFeatureFlags` true when the project has flags.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
from typing import Any

import pytest

from posthog_identity.testing import Sink
from tests.helpers.sink import KEY, send

CONFIG_SCRIPT = re.compile(
    r"\(function \(\) \{\n"
    r"  window\._POSTHOG_REMOTE_CONFIG = window\._POSTHOG_REMOTE_CONFIG \|\| \{\};\n"
    r"  window\._POSTHOG_REMOTE_CONFIG\[(?P<token>.*)\] = "
    r"\{config: (?P<config>.*), siteApps: \[\]\};\n"
    r"\}\)\(\);\n"
)


def run_node(script: str) -> Any:
    """Run a script in Node and return what it printed, as JSON."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    done = subprocess.run(
        [node, "-e", script], capture_output=True, text=True, timeout=30, check=True
    )
    return json.loads(done.stdout)


def remote_config_in_a_window(script: str) -> Any:
    # The config.js as a browser runs it: against a global `window`.
    return run_node("const window = {};\n" + script + "\nconsole.log(JSON.stringify(window));")[
        "_POSTHOG_REMOTE_CONFIG"
    ]


def test_config_js_sets_the_remote_config_for_its_token(sink: Sink) -> None:
    reply = send(sink.url + "/array/phc_test/config.js", method="GET")

    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/javascript; charset=utf-8"
    match = CONFIG_SCRIPT.fullmatch(reply.body.decode())
    assert match is not None
    assert json.loads(match["token"]) == KEY
    assert json.loads(match["config"])["token"] == KEY


def test_config_js_runs_in_a_javascript_engine(sink: Sink) -> None:
    script = send(sink.url + "/array/phc_test/config.js", method="GET").body.decode()
    configs = remote_config_in_a_window(script)
    assert list(configs) == [KEY]
    assert configs[KEY]["siteApps"] == []
    assert configs[KEY]["config"]["token"] == KEY


def test_config_js_escapes_a_hostile_token(sink: Sink) -> None:
    token = "</script><script>alert(1)//\"'\u2028"
    path = "/array/" + urllib.parse.quote(token, safe="") + "/config.js"
    script = send(sink.url + path, method="GET").body.decode()

    assert "</script>" not in script
    assert "\u2028" not in script
    assert list(remote_config_in_a_window(script)) == [token]


def test_config_json_is_the_same_config(sink: Sink) -> None:
    script = send(sink.url + "/array/phc_test/config.js", method="GET").body.decode()
    reply = send(sink.url + "/array/phc_test/config", method="GET")

    assert reply.headers["Content-Type"] == "application/json"
    match = CONFIG_SCRIPT.fullmatch(script)
    assert match is not None
    assert reply.json() == json.loads(match["config"])


def test_remote_config_turns_off_every_product_posthog_js_reads(sink: Sink) -> None:
    # The keys each posthog-js 1.449 extension reads in its onRemoteConfig.
    config = send(sink.url + "/array/phc_test/config", method="GET").json()
    assert config == {
        "token": KEY,
        "supportedCompression": ["gzip", "gzip-js"],
        "hasFeatureFlags": False,
        "captureDeadClicks": False,
        "capturePerformance": False,
        "autocapture_opt_out": False,
        "autocaptureExceptions": False,
        "analytics": {"endpoint": "/e/"},
        "elementsChainAsString": True,
        "errorTracking": {"autocaptureExceptions": False, "suppressionRules": []},
        "logs": {"captureConsoleLogs": False},
        "sessionRecording": False,
        "heatmaps": False,
        "conversations": False,
        "surveys": False,
        "productTours": False,
        "defaultIdentifiedOnly": True,
        "siteApps": [],
    }


def test_remote_config_has_feature_flags_when_flags_are_configured(flagged: Sink) -> None:
    # posthog-js skips its first /flags request when hasFeatureFlags is false.
    config = send(flagged.url + "/array/phc_test/config", method="GET").json()
    assert config["hasFeatureFlags"] is True


def test_remote_config_has_feature_flags_with_definitions_only(defined: Sink) -> None:
    config = send(defined.url + "/array/phc_test/config", method="GET").json()
    assert config["hasFeatureFlags"] is True
