"""What an `Engine` builds once from the settings (client, snippet, proxy), its per-request
helpers (which paths it bypasses, user ids and failing callbacks warned once per kind), and
its flush.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import posthog
import pytest
from posthog.client import Client

from posthog_identity.engine import Engine
from posthog_identity.identity import NOBODY, NOTHING
from posthog_identity.settings import Settings
from posthog_identity.signing import CookieCodec, CookieState
from tests.helpers.drivers import driver_for, make_site
from tests.helpers.project import API_KEY, SECRET


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


@pytest.mark.parametrize(
    ("exclude_paths", "disabled", "path", "bypassed"),
    [
        ((), False, "/", False),
        ((), True, "/anything", True),
        (("/static",), False, "/static", True),
        (("/static/",), False, "/static/app.js", True),
        (("/static",), False, "/statics", False),
        (("/static",), False, "/", False),
        (("/health", "/static"), False, "/static/x", True),
        (("/",), False, "/anything/at/all", True),
    ],
    ids=[
        "nothing-excluded",
        "disabled",
        "the-prefix-itself",
        "below-it",
        "a-longer-segment",
        "above-it",
        "a-later-prefix",
        "root-excludes-all",
    ],
)
def test_bypasses(
    settings: Settings,
    client: Client,
    exclude_paths: tuple[str, ...],
    disabled: bool,
    path: str,
    bypassed: bool,
) -> None:
    engine = Engine(replace(settings, exclude_paths=exclude_paths, disabled=disabled), client)

    assert engine.bypasses(path) is bypassed


def test_valid_user_ids_are_reported_as_strings_and_none_as_nobody(
    settings: Settings, client: Client
) -> None:
    engine = Engine(settings, client)

    assert engine.coerce(7) == "7"
    assert engine.coerce("kim") == "kim"
    assert engine.coerce(None) is NOBODY
    assert engine.coerce(NOTHING) is NOTHING


def test_an_invalid_user_id_reports_nothing_warned_once_per_kind(
    settings: Settings, client: Client, caplog_identity: pytest.LogCaptureFixture
) -> None:
    engine = Engine(settings, client)

    reports = [engine.coerce(value) for value in ([1], [2], "", {"id": 1}, "")]

    assert reports == [NOTHING] * 5
    assert len(warnings(caplog_identity)) == 3, "list, empty string, dict"
    assert all("ignoring a user id" in message for message in warnings(caplog_identity))


def test_a_raising_callback_reports_nothing_warned_once_per_exception_type_with_its_traceback(
    settings: Settings, client: Client, caplog_identity: pytest.LogCaptureFixture
) -> None:
    engine = Engine(settings, client)
    errors: list[Exception] = [LookupError("a"), LookupError("b"), RuntimeError("c")]

    def callback() -> object:
        raise errors.pop(0)

    reports = [engine.read_user(callback) for _ in range(3)]

    assert reports == [NOTHING] * 3
    records = [r for r in caplog_identity.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in records] == [
        "the user_id callback raised LookupError; the request reports nothing",
        "the user_id callback raised RuntimeError; the request reports nothing",
    ]
    assert [str(r.exc_info[1]) for r in records if r.exc_info] == ["a", "c"]


def test_a_callbacks_value_is_coerced(settings: Settings, client: Client) -> None:
    engine = Engine(settings, client)

    assert engine.read_user(lambda: 42) == "42"
    assert engine.read_user(lambda: None) is NOBODY


def test_init_options_given_to_the_engine_win_over_the_settings_and_reach_what_it_builds(
    client: Client,
) -> None:
    settings = Settings(
        secrets=(SECRET,), api_key=API_KEY, init_options={"persistence_name": "a", "debug": True}
    )

    engine = Engine(settings, client, init_options={"persistence_name": "shop"})

    assert engine.settings.init_options == {"persistence_name": "shop", "debug": True}
    assert settings.init_options == {"persistence_name": "a", "debug": True}
    assert engine.snippet is not None
    assert engine.snippet.config["persistence_name"] == "shop"
    assert engine.persistence_cookie == "ph_shop"


def test_the_given_clients_key_wins_and_names_the_snippet_and_the_persistence_cookie(
    settings: Settings,
) -> None:
    other = Client("phc_other+key", host=settings.host, sync_mode=True)
    try:
        engine = Engine(settings, other)
    finally:
        other.shutdown()

    assert settings.api_key == API_KEY
    assert engine.api_key == "phc_other+key"
    assert engine.snippet is not None
    assert engine.snippet.api_key == "phc_other+key"
    assert engine.persistence_cookie == "ph_phc_otherPLkey_posthog"


def test_without_a_key_nothing_page_side_is_built_and_one_warning_says_so(
    caplog_identity: pytest.LogCaptureFixture,
) -> None:
    engine = Engine(Settings(secrets=(SECRET,)))

    assert (engine.client, engine.snippet, engine.persistence_cookie) == (None, None, None)
    assert len(warnings(caplog_identity)) == 1
    assert "no PostHog API key" in warnings(caplog_identity)[0]


def test_a_disabled_engine_builds_no_client_and_no_proxy_and_says_nothing(
    caplog_identity: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(secrets=(SECRET,), api_key=API_KEY, proxy_path="/ingest", disabled=True)

    engine = Engine(settings)

    assert (engine.client, engine.proxy) == (None, None)
    assert warnings(caplog_identity) == []


def test_read_cookie_reads_the_configured_cookie_with_the_settings_secrets(
    settings: Settings, client: Client
) -> None:
    old, new = "an-older-secret-0123456789abcdef0123", SECRET
    state = CookieState("6a3d1a8e-2b7c-4f2e-9d7b-1c0e5f4a3b21", issued_at=1)
    value = CookieCodec((old,)).dumps(state)
    engine = Engine(replace(settings, cookie_name="sid", secrets=(new, old)), client)

    verified = engine.read_cookie(f"ph_identity=forged; sid={value}")

    assert verified is not None
    assert (verified.state, verified.key_index) == (state, 1)
    assert engine.read_cookie(f"ph_identity={value}") is None


def test_a_failing_flush_is_logged(
    settings: Settings, broken: posthog.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="posthog_identity")
    Engine(settings, broken).flush()
    assert "flushing events failed" in caplog.text


def test_flush_without_a_client_does_nothing(settings: Settings) -> None:
    engine = Engine(replace(settings, api_key=None))
    assert engine.client is None
    engine.flush()


def test_with_the_proxy_the_page_talks_to_the_sites_own_origin() -> None:
    engine = Engine(
        Settings(
            secrets=(SECRET,),
            api_key=API_KEY,
            host="https://eu.i.posthog.com",
            proxy_path="/ingest",
        )
    )
    assert engine.snippet is not None
    assert engine.snippet.config["api_host"] == "/ingest"
    assert engine.snippet.config["ui_host"] == "https://eu.posthog.com"
    assert engine.snippet.script_url == "/ingest/static/array.js"


def header_reader(headers: dict[str, str]) -> tuple[object, object]:
    """A request's headers and the (native, name) reader the adapters give `bypasses`."""
    return headers, lambda native, name: native.get(name)


@pytest.mark.parametrize(
    ("method", "headers", "bypassed"),
    [
        ("OPTIONS", {"access-control-request-method": "POST"}, True),
        ("OPTIONS", {"access-control-request-method": ""}, True),
        ("OPTIONS", {}, False),
        ("POST", {"access-control-request-method": "POST"}, False),
        ("GET", {}, False),
    ],
    ids=["preflight", "preflight-empty-value", "plain-options", "post-with-the-header", "get"],
)
def test_a_cors_preflight_is_bypassed(
    settings: Settings, client: Client, method: str, headers: dict[str, str], bypassed: bool
) -> None:
    engine = Engine(settings, client)
    native, reader = header_reader(headers)
    assert engine.bypasses("/api/x", method, reader, native) is bypassed  # type: ignore[arg-type]


def test_only_an_options_request_has_its_headers_read(settings: Settings, client: Client) -> None:
    def never(native: object, name: str) -> str | None:
        raise AssertionError("headers read for a request that cannot be a preflight")

    assert Engine(settings, client).bypasses("/", "GET", never, {}) is False


def secret_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [message for message in warnings(caplog) if "POSTHOG_IDENTITY_SECRET" in message]


def test_a_short_secret_is_warned_once_at_start_up_naming_the_variable_and_its_length(
    adapter: str, settings: Settings, client: Client, caplog_identity: pytest.LogCaptureFixture
) -> None:
    site = driver_for(adapter, make_site(adapter, replace(settings, secrets=("short",)), client))
    [warning] = secret_warnings(caplog_identity)

    first, *later = [site.get("/") for _ in range(3)]
    assert first.identity_cookies, "the short secret still signs the cookie"
    assert [reply.identity_cookies for reply in later] == [[], []], "and verifies it"

    assert secret_warnings(caplog_identity) == [warning], "once per middleware, not per request"
    assert "POSTHOG_IDENTITY_SECRET: the newest secret has 5 characters" in warning
    assert "at least 32" in warning


@pytest.mark.parametrize(
    ("secrets", "disabled"),
    [((SECRET,), False), ((SECRET, "old"), False), (("short",), True)],
    ids=["long-enough", "only-an-older-one-is-short", "disabled"],
)
def test_no_secret_warning_when_the_newest_secret_is_long_enough_or_nothing_is_signed(
    settings: Settings,
    client: Client,
    caplog_identity: pytest.LogCaptureFixture,
    secrets: tuple[str, ...],
    disabled: bool,
) -> None:
    assert len(SECRET) >= 32
    Engine(replace(settings, secrets=secrets, disabled=disabled), client)

    assert secret_warnings(caplog_identity) == []
