"""The browser snippet: safe encoding, nonce reuse, loader URL, its identity logic run in Node."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib import resources
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from posthog_identity import ConfigurationError, Settings
from posthog_identity.identity import Identity
from posthog_identity.snippet import Snippet, csp_nonce, default_script_url, script_json

ANON = "0190a0f2-7c1e-7b3a-9d55-4c1e2f3a4b5c"
SNIPPET = Snippet("phc_key", "https://eu.i.posthog.com")


@pytest.mark.parametrize(
    ("value", "forbidden"),
    [
        ("</script><script>alert(1)</script>", "</"),
        ("<!--", "<!"),
        ("a&amp;b", "&"),
        ("line\u2028break\u2029para", "\u2028"),
        ('quote"s and \\ backslash', None),
    ],
    ids=["script-close", "comment", "entity", "line-separators", "quotes"],
)
def test_script_json_cannot_leave_the_string(value: str, forbidden: str | None) -> None:
    encoded = script_json({"id": value})
    assert json.loads(encoded) == {"id": value}
    for char in "<>&\u2028\u2029":
        assert char not in encoded
    if forbidden:
        assert forbidden not in encoded


@given(st.text())
def test_any_id_round_trips_and_never_contains_markup(value: str) -> None:
    encoded = script_json(value)
    assert json.loads(encoded) == value
    assert not set(encoded) & set("<>&\u2028\u2029")


def test_a_hostile_user_id_stays_inside_the_script() -> None:
    hostile = '</script><script>alert(1)</script>"\u2028'
    rendered = SNIPPET.render(Identity(ANON, hostile, True)).decode()
    assert rendered.count("<script") == 1
    assert rendered.count("</script>") == 1
    assert rendered.endswith("</script>")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("https://us.i.posthog.com", "https://us-assets.i.posthog.com/static/array.js"),
        ("https://eu.i.posthog.com", "https://eu-assets.i.posthog.com/static/array.js"),
        ("https://app.posthog.com", "https://us-assets.i.posthog.com/static/array.js"),
        ("https://eu.posthog.com", "https://eu-assets.i.posthog.com/static/array.js"),
        ("https://posthog.example.com", "https://posthog.example.com/static/array.js"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/static/array.js"),
    ],
    ids=["us", "eu", "legacy-app", "legacy-eu", "self-hosted", "local"],
)
def test_default_script_url(host: str, expected: str) -> None:
    assert default_script_url(host) == expected


def test_an_explicit_script_url_wins() -> None:
    snippet = Snippet("phc", "https://us.i.posthog.com", "/static/posthog/array.js")
    assert '"src":"/static/posthog/array.js"' in snippet.render(None).decode()


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("script-src 'nonce-abc123' 'strict-dynamic'", "abc123"),
        ("default-src 'self'; script-src 'self' 'nonce-r4nd0m+/='", "r4nd0m+/="),
        ("default-src 'nonce-fromdefault'", "fromdefault"),
        ("script-src-elem 'nonce-elem'; script-src 'nonce-other'", "elem"),
        ("script-src 'self'; default-src 'nonce-unused'", None),
        ("style-src 'nonce-style'", None),
        ("script-src 'nonce-<bad>'", None),
    ],
    ids=[
        "script-src",
        "with-default",
        "default-only",
        "script-src-elem",
        "script-src-wins",
        "style-only",
        "invalid",
    ],
)
def test_csp_nonce(policy: str, expected: str | None) -> None:
    assert csp_nonce([("Content-Security-Policy", policy)]) == expected


def test_the_nonce_is_reused_on_our_tag() -> None:
    rendered = SNIPPET.render(Identity(ANON), "abc123").decode()
    assert rendered.startswith('<script data-posthog-identity nonce="abc123">')
    assert '"nonce":"abc123"' in rendered


def test_report_only_policies_are_ignored() -> None:
    assert csp_nonce([("Content-Security-Policy-Report-Only", "script-src 'nonce-x'")]) is None


def test_init_options_come_from_the_environment_and_the_keyword() -> None:
    settings = Settings.from_env(
        {
            "POSTHOG_IDENTITY_SECRET": "s",
            "POSTHOG_IDENTITY_INIT_OPTIONS": '{"capture_pageview": false, "api_host": "/ingest"}',
        }
    )
    assert settings.init_options == {"capture_pageview": False, "api_host": "/ingest"}
    snippet = Snippet("phc", settings.host, None, settings.init_options)
    assert snippet.config == {"api_host": "/ingest", "capture_pageview": False}


@pytest.mark.parametrize(
    "raw",
    ["[1]", "not json", '{"bootstrap": {}}', '{"loaded": 1}'],
    ids=["array", "garbage", "bootstrap", "loaded"],
)
def test_bad_init_options_fail_at_start_up(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_INIT_OPTIONS"):
        Settings.from_env({"POSTHOG_IDENTITY_SECRET": "s", "POSTHOG_IDENTITY_INIT_OPTIONS": raw})


def test_init_options_must_be_json_serializable() -> None:
    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_INIT_OPTIONS"):
        Settings(secrets=("s",), init_options={"when": object()})


# -- the snippet's JavaScript, run in Node against a stand-in posthog instance -------

NODE = shutil.which("node")
HARNESS = """
const vm = require("vm");
const [script, persisted] = [process.argv[1], JSON.parse(process.argv[2])];
const calls = [];
const appended = [];
const document = {head: {appendChild: (e) => appended.push(e)}, createElement: () => ({})};
const window = {location: {hostname: "shop.example"}};
vm.runInNewContext(script, {window, document});
const [token, config, name] = window.posthog._i[0];
// What posthog-js does at init: bootstrap, else the persisted id, else get_device_id.
let id = persisted.id, state = persisted.state;
if (config.bootstrap && config.bootstrap.distinctID) {
  id = config.bootstrap.distinctID; state = "anonymous";
}
const fresh = () => (config.get_device_id ? config.get_device_id("random") : "random");
if (id === null) { id = fresh(); state = "anonymous"; }
const instance = {
  get_distinct_id: () => id,
  get_property: (k) => (k === "$user_state" ? state : undefined),
  reset: (options) => {
    calls.push(["reset", options && options.resetDeviceID]); id = fresh(); state = "anonymous";
  },
  identify: (u) => { calls.push(["identify", u, id]); id = u; state = "identified"; },
};
if (config.loaded) config.loaded(instance);
const element = appended[0];
const prepare = config.prepare_external_dependency_script;
const scriptNonce = prepare ? prepare({}).nonce : null;
console.log(JSON.stringify({token, name, config, calls, id, state, src: element.src,
  nonce: element.nonce || null, scriptNonce, hasCapture: typeof window.posthog.capture}));
"""


def run(snippet: bytes, persisted: dict[str, Any]) -> dict[str, Any]:
    assert NODE is not None
    match = re.fullmatch(rb"<script[^>]*>(.*)</script>", snippet, re.DOTALL)
    assert match is not None
    result = subprocess.run(
        [NODE, "-e", HARNESS, match.group(1).decode(), json.dumps(persisted)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return json.loads(result.stdout)  # type: ignore[no-any-return]


FRESH = {"id": None, "state": None}
pytestmark_node = pytest.mark.skipif(NODE is None, reason="node is not installed")


@pytestmark_node
def test_after_logout_the_browser_resets_onto_the_cookie_id_with_a_new_device() -> None:
    out = run(SNIPPET.render(Identity(ANON)), {"id": "u1", "state": "identified"})
    assert "bootstrap" not in out["config"]
    assert out["calls"] == [["reset", True]], "a plain reset would keep u1's $device_id"
    assert (out["id"], out["state"]) == (ANON, "anonymous")


@pytestmark_node
def test_the_sites_own_requests_carry_posthogs_session_headers() -> None:
    out = run(SNIPPET.render(Identity(ANON)), FRESH)
    assert out["config"]["tracing_headers"] == ["shop.example"]


@pytestmark_node
def test_tracing_headers_the_app_configured_are_kept() -> None:
    snippet = Snippet("phc_key", "https://eu.i.posthog.com", options={"tracing_headers": ["api.x"]})
    out = run(snippet.render(Identity(ANON)), FRESH)
    assert out["config"]["tracing_headers"] == ["api.x"]


@pytestmark_node
def test_a_fresh_anonymous_browser_starts_on_the_cookie_id() -> None:
    out = run(SNIPPET.render(Identity(ANON)), FRESH)
    assert out["calls"] == []
    assert (out["id"], out["state"]) == (ANON, "anonymous")
    assert (out["token"], out["name"]) == ("phc_key", "posthog")
    assert out["src"] == "https://eu-assets.i.posthog.com/static/array.js"
    assert out["config"]["api_host"] == "https://eu.i.posthog.com"


@pytestmark_node
def test_a_fresh_browser_of_a_known_user_starts_on_the_cookie_id_then_identifies() -> None:
    out = run(SNIPPET.render(Identity(ANON, "u1", True)), FRESH)
    assert "bootstrap" not in out["config"]
    assert out["calls"] == [["identify", "u1", ANON]]
    assert out["id"] == "u1"


@pytestmark_node
def test_after_login_the_anonymous_browser_identifies_once() -> None:
    out = run(SNIPPET.render(Identity(ANON, "u1", True)), {"id": ANON, "state": "anonymous"})
    assert out["calls"] == [["identify", "u1", ANON]]


@pytestmark_node
def test_a_browser_already_on_the_user_does_nothing() -> None:
    out = run(SNIPPET.render(Identity(ANON, "u1", True)), {"id": "u1", "state": "identified"})
    assert out["calls"] == []


@pytestmark_node
def test_an_account_switch_resets_before_identifying_the_new_user() -> None:
    out = run(SNIPPET.render(Identity(ANON, "u2", True)), {"id": "u1", "state": "identified"})
    assert out["calls"] == [["reset", True], ["identify", "u2", ANON]], "u1 never merges into u2"


@pytestmark_node
def test_a_remembered_but_unreported_user_is_left_alone() -> None:
    out = run(SNIPPET.render(Identity(ANON, None, True)), {"id": "u1", "state": "identified"})
    assert "bootstrap" not in out["config"]
    assert out["calls"] == []
    assert out["id"] == "u1"


@pytestmark_node
def test_a_shared_cacheable_page_carries_no_identity() -> None:
    rendered = SNIPPET.render(None)
    assert ANON not in rendered.decode()
    out = run(rendered, {"id": "u1", "state": "identified"})
    assert "bootstrap" not in out["config"]
    assert "get_device_id" not in out["config"]
    assert out["calls"] == []


@pytestmark_node
def test_the_nonce_reaches_the_loader_and_posthogs_own_scripts() -> None:
    out = run(SNIPPET.render(Identity(ANON), "n0nce"), FRESH)
    assert out["nonce"] == "n0nce"
    assert out["scriptNonce"] == "n0nce", "config.js and surveys.js get it too"


@pytestmark_node
def test_calls_made_before_posthog_js_loads_are_queued() -> None:
    out = run(SNIPPET.render(Identity(ANON)), FRESH)
    assert out["hasCapture"] == "function"


@pytestmark_node
def test_the_loader_is_package_data_that_parses_as_javascript_on_its_own() -> None:
    source = (resources.files("posthog_identity") / "snippet.js").read_text(encoding="utf-8")
    # A function expression of (window, document, options), as a linter reads the file.
    checked = subprocess.run(
        [str(NODE), "-e", "new Function('return ' + process.argv[1]);", source],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr
    assert "".join(source.splitlines()) in SNIPPET.render(Identity(ANON)).decode()
