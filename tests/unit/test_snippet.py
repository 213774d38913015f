"""The browser snippet: safe encoding, nonce reuse, loader URL; its identity logic and its
consent handling (storage cleared, posthog-js held back) run in Node."""

from __future__ import annotations

import json
import subprocess
from importlib import resources
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from posthog_identity import ConfigurationError, Settings
from posthog_identity.consent import ConsentState
from posthog_identity.flags import Flags
from posthog_identity.identity import Identity
from posthog_identity.snippet import (
    NO_CONSENT_OPTIONS,
    Snippet,
    csp_nonce,
    default_script_url,
    script_json,
)
from tests.helpers.consent import DENIED, GRANTED, PENDING, UNKNOWN, settings_for
from tests.helpers.node import NODE, needs_node, run_in_node

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


# What a page varies by: the id (hostile text included), the CSP nonce (what
# csp_nonce accepts), flags, consent, and the consent mode.
identities = st.none() | st.builds(
    Identity,
    st.uuids().map(str),
    st.none() | st.text(),
    st.booleans(),
)
flag_sets = st.none() | st.builds(
    Flags,
    st.dictionaries(st.text(), st.booleans() | st.text()),
    st.dictionaries(st.text(), st.text()),
)
nonces = st.none() | st.text("ABCabc019+/_=-", min_size=1)


@given(
    identities,
    nonces,
    flag_sets,
    st.sampled_from(ConsentState),
    st.sampled_from(["not-required", "opt-in", "opt-out"]),
)
def test_the_page_values_are_script_json_of_the_request_and_nothing_escapes(
    identity: Identity | None,
    nonce: str | None,
    flags: Flags | None,
    state: ConsentState,
    mode: str,
) -> None:
    snippet = Snippet("phc_key", "https://eu.i.posthog.com", None, None, settings_for(mode))
    rendered = snippet.render(identity, nonce, flags, state).decode()
    assert rendered.count("</script>") == 1
    assert rendered.endswith(");</script>")
    start = rendered.index('(window,document,{"token":') + len("(window,document,")
    argument = rendered[start : -len(");</script>")]
    values = json.loads(argument)
    # Exactly script_json's text of that object: no tag, entity or line break escapes.
    assert argument == script_json(values)
    # Without consent a page carries no id and no flags (a shared page has no id to withhold).
    withheld = mode != "not-required" and identity is not None and state is not GRANTED
    has_consent = mode != "not-required" and (identity is None or withheld)
    assert list(values) == [
        *("token", "src", "methods", "config", "nonce", "flags", "identity"),
        *(["consent"] if has_consent else []),
    ]
    assert values["nonce"] == nonce
    assert (f' nonce="{nonce}">' in rendered) is (nonce is not None)
    if identity is None or withheld:
        assert values["identity"] is None
    else:
        assert values["identity"] == {
            "anonymous": identity.anonymous_id,
            "user": identity.user_id,
            "signedIn": identity.signed_in,
        }
    if flags is None or withheld:
        assert values["flags"] is None
    else:
        assert values["flags"] == {"values": dict(flags.values), "payloads": dict(flags.payloads)}


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
    return run_in_node(HARNESS, snippet, persisted)


FRESH = {"id": None, "state": None}


@needs_node
def test_after_logout_the_browser_resets_onto_the_cookie_id_with_a_new_device() -> None:
    out = run(SNIPPET.render(Identity(ANON)), {"id": "u1", "state": "identified"})
    assert "bootstrap" not in out["config"]
    assert out["calls"] == [["reset", True]], "a plain reset would keep u1's $device_id"
    assert (out["id"], out["state"]) == (ANON, "anonymous")


@needs_node
def test_the_sites_own_requests_carry_posthogs_session_headers() -> None:
    out = run(SNIPPET.render(Identity(ANON)), FRESH)
    assert out["config"]["tracing_headers"] == ["shop.example"]


@needs_node
def test_tracing_headers_the_app_configured_are_kept() -> None:
    snippet = Snippet("phc_key", "https://eu.i.posthog.com", options={"tracing_headers": ["api.x"]})
    out = run(snippet.render(Identity(ANON)), FRESH)
    assert out["config"]["tracing_headers"] == ["api.x"]


@needs_node
def test_a_fresh_anonymous_browser_starts_on_the_cookie_id() -> None:
    out = run(SNIPPET.render(Identity(ANON)), FRESH)
    assert out["calls"] == []
    assert (out["id"], out["state"]) == (ANON, "anonymous")
    assert (out["token"], out["name"]) == ("phc_key", "posthog")
    assert out["src"] == "https://eu-assets.i.posthog.com/static/array.js"
    assert out["config"]["api_host"] == "https://eu.i.posthog.com"


@needs_node
def test_a_fresh_browser_of_a_known_user_starts_on_the_cookie_id_then_identifies() -> None:
    out = run(SNIPPET.render(Identity(ANON, "u1", True)), FRESH)
    assert "bootstrap" not in out["config"]
    assert out["calls"] == [["identify", "u1", ANON]]
    assert out["id"] == "u1"


@needs_node
def test_after_login_the_anonymous_browser_identifies_once() -> None:
    out = run(SNIPPET.render(Identity(ANON, "u1", True)), {"id": ANON, "state": "anonymous"})
    assert out["calls"] == [["identify", "u1", ANON]]


@needs_node
def test_a_browser_already_on_the_user_does_nothing() -> None:
    out = run(SNIPPET.render(Identity(ANON, "u1", True)), {"id": "u1", "state": "identified"})
    assert out["calls"] == []


@needs_node
def test_an_account_switch_resets_before_identifying_the_new_user() -> None:
    out = run(SNIPPET.render(Identity(ANON, "u2", True)), {"id": "u1", "state": "identified"})
    assert out["calls"] == [["reset", True], ["identify", "u2", ANON]], "u1 never merges into u2"


@needs_node
def test_a_remembered_but_unreported_user_is_left_alone() -> None:
    out = run(SNIPPET.render(Identity(ANON, None, True)), {"id": "u1", "state": "identified"})
    assert "bootstrap" not in out["config"]
    assert out["calls"] == []
    assert out["id"] == "u1"


@needs_node
def test_a_shared_cacheable_page_carries_no_identity() -> None:
    rendered = SNIPPET.render(None)
    assert ANON not in rendered.decode()
    out = run(rendered, {"id": "u1", "state": "identified"})
    assert "bootstrap" not in out["config"]
    assert "get_device_id" not in out["config"]
    assert out["calls"] == []


@needs_node
def test_the_nonce_reaches_the_loader_and_posthogs_own_scripts() -> None:
    out = run(SNIPPET.render(Identity(ANON), "n0nce"), FRESH)
    assert out["nonce"] == "n0nce"
    assert out["scriptNonce"] == "n0nce", "config.js and surveys.js get it too"


@needs_node
def test_calls_made_before_posthog_js_loads_are_queued() -> None:
    out = run(SNIPPET.render(Identity(ANON)), FRESH)
    assert out["hasCapture"] == "function"


@needs_node
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
    # Its lines, joined, are what a consent mode's page carries (the region markers dropped).
    lines = [line for line in source.splitlines() if line not in ("/*consent*/", "/*end consent*/")]
    assert "".join(lines) in snippet("opt-out").render(Identity(ANON)).decode()


def test_a_page_carries_the_consent_code_only_in_a_consent_mode() -> None:
    default = SNIPPET.render(Identity(ANON))
    consenting = snippet("opt-out").render(Identity(ANON), None, None, GRANTED)
    for code in (b"function wipe(", b"function consent(", b"function cookie(", b"if(k){"):
        assert code not in default
        assert code in consenting


# -- consent: the snippet's JavaScript, in Node against the browser's storage -----------

TOKEN = "phc_key+/="
STORAGE_HARNESS = """
const vm = require("vm");
const [script, env] = [process.argv[1], JSON.parse(process.argv[2])];
function storage(initial) {
  const items = new Map(Object.entries(initial || {}));
  return {
    get length() { return items.size; },
    key: (i) => (i < items.size ? [...items.keys()][i] : null),
    getItem: (k) => (items.has(k) ? items.get(k) : null),
    setItem: (k, v) => items.set(k, String(v)),
    removeItem: (k) => items.delete(k),
    dump: () => Object.fromEntries(items),
  };
}
const writes = [];
const document = {
  head: {appendChild: () => {}},
  createElement: () => ({}),
  get cookie() { return env.cookie || ""; },
  set cookie(value) { writes.push(value); },
};
const window = {
  localStorage: storage(env.local),
  sessionStorage: storage(env.session),
  navigator: env.navigator || {},
  location: env.location || {hostname: "www.shop.example", protocol: "http:"},
};
vm.runInNewContext(script, {window, document});
const [token, config] = window.posthog._i[0];
const kinds = {loaded: typeof config.loaded, get_device_id: typeof config.get_device_id};
console.log(JSON.stringify({config, kinds, writes, local: window.localStorage.dump(),
  session: window.sessionStorage.dump()}));
"""


def run_with_storage(snippet: bytes, **env: Any) -> dict[str, Any]:
    return run_in_node(STORAGE_HARNESS, snippet, env)


def snippet(mode: str = "opt-in", **changes: Any) -> Snippet:
    settings = settings_for(mode, **changes)
    return Snippet(TOKEN, "https://eu.i.posthog.com", None, {"request_batching": False}, settings)


POSTHOG_STORAGE = {
    "ph_phc_keyPLSLEQ_posthog": "{}",  # persistence: + / = spelt PL SL EQ
    "ph_phc_key+/=_window_id": "w",  # session keys use the token as is
    "__ph_opt_in_out_phc_key+/=": "1",
    "seenSurvey_abc": "true",
    "app_setting": "kept",
    "ph_other_token_posthog": "kept",
}
LEFT = {"app_setting": "kept", "ph_other_token_posthog": "kept"}
COOKIE = "ph_phc_keyPLSLEQ_posthog=%7B%7D; app=1; ph_consent=denied"


def test_not_required_renders_exactly_as_before() -> None:
    plain = Snippet(TOKEN, "https://eu.i.posthog.com")
    with_settings = Snippet(
        TOKEN, "https://eu.i.posthog.com", None, None, settings_for("not-required")
    )
    for state in ConsentState:
        assert with_settings.render(Identity(ANON), None, None, state) == plain.render(
            Identity(ANON)
        )
    assert b'"consent"' not in plain.render(None)


def test_a_consented_page_is_the_normal_snippet() -> None:
    assert b'"consent"' not in snippet().render(Identity(ANON, "u1", True), None, None, GRANTED)


@needs_node
@pytest.mark.parametrize(
    ("state", "opted_out", "cleared"),
    [(PENDING, False, True), (DENIED, True, True), (UNKNOWN, True, False)],
    ids=["pending", "denied", "unknown"],
)
def test_without_consent_posthog_js_keeps_nothing(
    state: ConsentState, opted_out: bool, cleared: bool
) -> None:
    rendered = snippet().render(Identity(ANON, "u1", True), None, None, state)
    assert ANON.encode() not in rendered
    assert b"u1" not in rendered
    out = run_with_storage(rendered, local=POSTHOG_STORAGE, session=POSTHOG_STORAGE, cookie=COOKIE)
    config = out["config"]
    for option, value in NO_CONSENT_OPTIONS.items():
        assert config[option] == value
    assert config["request_batching"] is False, "the app's own options stay"
    assert "bootstrap" not in config
    assert out["kinds"] == {"loaded": "undefined", "get_device_id": "undefined"}, "no identify"
    assert config.get("opt_out_capturing_by_default", False) is opted_out
    if cleared:
        assert out["local"] == LEFT
        assert out["session"] == LEFT
        gone = "ph_phc_keyPLSLEQ_posthog=;Max-Age=0;Path=/"
        assert out["writes"] == [
            gone,
            f"{gone};Domain=.www.shop.example",
            f"{gone};Domain=.shop.example",
            f"{gone};Domain=.example",
        ], "host-only and every parent domain; the app's and the banner's cookies stay"
    else:
        assert out["local"] == POSTHOG_STORAGE
        assert out["writes"] == []


@needs_node
def test_cookies_are_deleted_as_secure_on_https() -> None:
    rendered = snippet().render(Identity(ANON), None, None, DENIED)
    out = run_with_storage(
        rendered, cookie=COOKIE, location={"hostname": "shop.example", "protocol": "https:"}
    )
    assert out["writes"][0] == "ph_phc_keyPLSLEQ_posthog=;Max-Age=0;Path=/;Secure"


@needs_node
def test_flags_are_not_bootstrapped_without_consent() -> None:
    flags = Flags({"beta": True}, {})
    out = run_with_storage(snippet().render(Identity(ANON), None, flags, PENDING))
    assert "bootstrap" not in out["config"]
    out = run_with_storage(snippet().render(Identity(ANON), None, flags, GRANTED))
    assert out["config"]["bootstrap"]["featureFlags"] == {"beta": True}


SHARED_CASES = [
    ("opt-in", "ph_consent=granted", {}, "normal"),
    ("opt-in", 'ph_consent="Granted"', {}, "normal"),
    ("opt-in", "", {}, "pending"),
    ("opt-in", "ph_consent=whatever", {}, "pending"),
    ("opt-in", "ph_consent=denied", {}, "denied"),
    ("opt-out", "", {}, "normal"),
    ("opt-out", "other=1; ph_consent=no", {}, "denied"),
    ("opt-out", "", {"globalPrivacyControl": True}, "denied"),
    ("opt-out", "ph_consent=yes", {"globalPrivacyControl": True}, "normal"),
    ("opt-out", "", {"doNotTrack": "1"}, "normal"),
]


@needs_node
@pytest.mark.parametrize(
    ("mode", "cookie", "navigator", "expected"),
    SHARED_CASES,
    ids=[
        "granted",
        "quoted-any-case",
        "opt-in-no-cookie",
        "opt-in-unknown-value",
        "denied",
        "opt-out-no-cookie",
        "opt-out-denied",
        "gpc",
        "cookie-beats-gpc",
        "dnt-off",
    ],
)
def test_a_shared_page_decides_from_the_consent_cookie_and_browser_signals(
    mode: str, cookie: str, navigator: dict[str, Any], expected: str
) -> None:
    rendered = snippet(mode).render(None)
    out = run_with_storage(rendered, cookie=cookie, navigator=navigator, local=POSTHOG_STORAGE)
    config = out["config"]
    if expected == "normal":
        assert "persistence" not in config
        assert out["local"] == POSTHOG_STORAGE, "a consented visitor's storage stays"
        return
    assert config["persistence"] == "memory"
    assert config.get("opt_out_capturing_by_default", False) is (expected == "denied")
    # Only a refusal clears: a shared page cannot know about a consent the app's callable holds.
    assert (out["local"] == LEFT) is (expected == "denied")


@needs_node
def test_dnt_is_honoured_in_the_browser_when_switched_on() -> None:
    rendered = snippet("opt-out", respect_dnt=True).render(None)
    out = run_with_storage(rendered, navigator={"doNotTrack": "1"})
    assert out["config"]["opt_out_capturing_by_default"] is True
