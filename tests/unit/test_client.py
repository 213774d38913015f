"""`posthog_identity.client`: which client the middleware sends through, in-process.

The one given, posthog's module-level client when the app configured it, or
one built from the settings that becomes posthog's default (one posthog client
per process); none when there is nothing to send.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import posthog
import pytest

from posthog_identity.asgi import IdentityMiddleware as ASGIMiddleware
from posthog_identity.settings import Settings
from posthog_identity.testing import Sink
from posthog_identity.wsgi import IdentityMiddleware as WSGIMiddleware
from tests.helpers.flags import app_configured_posthog, loaded
from tests.helpers.project import API_KEY

# ---------------------------------------------------------------------------
# In-process: which client the middleware sends through


@pytest.fixture
def bare_posthog() -> Iterator[None]:
    """posthog's module as a newcomer's app leaves it: not configured."""
    saved = posthog.api_key, posthog.project_api_key, posthog.host, posthog.default_client
    posthog.api_key = posthog.project_api_key = posthog.host = posthog.default_client = None
    yield
    posthog.api_key, posthog.project_api_key, posthog.host, posthog.default_client = saved


MIDDLEWARES = {"wsgi": WSGIMiddleware, "asgi": ASGIMiddleware}


def wrap(adapter: str, settings: Settings, client: posthog.Client | None = None) -> Any:
    """A middleware of `adapter`; only its choice of client matters here."""
    return MIDDLEWARES[adapter](None, settings, client=client)


@pytest.mark.usefixtures("bare_posthog")
def test_without_a_configured_module_the_middlewares_client_becomes_posthogs_default(
    adapter: str, settings: Settings
) -> None:
    middleware = wrap(adapter, settings)

    assert middleware.engine.client is not None
    assert posthog.default_client is middleware.engine.client
    assert posthog.setup() is middleware.engine.client


@pytest.mark.usefixtures("module_posthog")
def test_a_module_the_app_configured_is_the_client_the_middleware_uses(
    adapter: str, settings: Settings
) -> None:
    module_client = posthog.setup()

    middleware = wrap(adapter, settings)

    assert middleware.engine.client is module_client
    assert posthog.default_client is module_client


@pytest.mark.usefixtures("bare_posthog")
def test_a_module_api_key_set_before_any_capture_is_used_through_posthog_setup(
    adapter: str, settings: Settings, sink: Sink
) -> None:
    posthog.api_key, posthog.host = API_KEY, sink.url

    middleware = wrap(adapter, settings)

    assert posthog.default_client is not None
    assert middleware.engine.client is posthog.default_client


@pytest.mark.usefixtures("bare_posthog")
def test_a_given_client_is_used_and_posthogs_module_is_left_alone(
    adapter: str, settings: Settings, client: posthog.Client
) -> None:
    middleware = wrap(adapter, settings, client=client)

    assert middleware.engine.client is client
    assert posthog.default_client is None


@pytest.mark.usefixtures("bare_posthog")
def test_a_second_middleware_in_the_process_reuses_the_first_ones_client(
    settings: Settings,
) -> None:
    first = wrap("wsgi", settings)
    second = wrap("asgi", settings)

    assert second.engine.client is first.engine.client


@pytest.mark.usefixtures("bare_posthog")
@pytest.mark.parametrize(
    "change", [{"disabled": True}, {"api_key": None}], ids=["disabled", "no API key"]
)
def test_without_events_to_send_no_client_is_built_and_posthog_is_left_alone(
    adapter: str, settings: Settings, change: dict[str, object]
) -> None:
    middleware = wrap(adapter, replace(settings, **change))  # type: ignore[arg-type]

    assert middleware.engine.client is None
    assert posthog.default_client is None


@pytest.mark.usefixtures("module_posthog")
def test_a_module_configured_with_another_key_wins_and_the_difference_is_logged(
    adapter: str, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="posthog_identity")

    middleware = wrap(adapter, replace(settings, api_key="phc_another_project"))

    assert middleware.engine.client is posthog.setup()
    assert middleware.engine.api_key == API_KEY
    assert any("POSTHOG_API_KEY differs" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------
# A module client the app configured, built for flag bootstrapping

PERSONAL_KEY = "phx_from_the_settings"


def flag_settings(settings: Settings, **overrides: Any) -> Settings:
    return replace(settings, bootstrap_flags=True, **overrides)


def test_the_module_client_the_app_configured_is_built_with_the_settings_personal_key(
    adapter: str, settings: Settings, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="posthog_identity")
    with app_configured_posthog(sink.url):
        middleware = wrap(adapter, flag_settings(settings, personal_api_key=PERSONAL_KEY))

        client = middleware.engine.client
        loaded(client)
        assert client is posthog.default_client
        assert (client.api_key, client.host) == (API_KEY, sink.url)
        assert client.personal_api_key == PERSONAL_KEY
        # With a key it evaluates locally: posthog's own flag timeout stands.
        assert client.feature_flags_request_timeout_seconds == 3
    [line] = [r.getMessage() for r in caplog.records if "posthog's module" in r.getMessage()]
    assert "POSTHOG_PERSONAL_API_KEY" in line


def test_without_a_personal_key_the_module_client_gets_the_flags_timeout(
    adapter: str, settings: Settings, sink: Sink
) -> None:
    with app_configured_posthog(sink.url):
        middleware = wrap(adapter, flag_settings(settings, flags_timeout=0.5))

        assert middleware.engine.client.personal_api_key is None
        assert middleware.engine.client.feature_flags_request_timeout_seconds == 0.5


def test_a_personal_key_the_app_set_on_posthogs_module_is_kept(
    adapter: str, settings: Settings, sink: Sink
) -> None:
    with app_configured_posthog(sink.url, secret_key="phx_the_apps_own"):
        middleware = wrap(adapter, flag_settings(settings, personal_api_key=PERSONAL_KEY))
        loaded(middleware.engine.client)

        assert middleware.engine.client.personal_api_key == "phx_the_apps_own"


def test_a_flag_timeout_the_app_set_on_posthogs_module_is_kept(
    adapter: str, settings: Settings, sink: Sink
) -> None:
    with app_configured_posthog(sink.url, feature_flags_request_timeout_seconds=2.0):
        middleware = wrap(adapter, flag_settings(settings, flags_timeout=0.5))

        assert middleware.engine.client.feature_flags_request_timeout_seconds == 2.0


def test_without_flag_bootstrapping_posthogs_module_is_built_as_the_app_configured_it(
    adapter: str, settings: Settings, sink: Sink
) -> None:
    with app_configured_posthog(sink.url):
        middleware = wrap(adapter, replace(settings, personal_api_key=PERSONAL_KEY))

        client = middleware.engine.client
        assert client.personal_api_key is None
        assert client.feature_flags_request_timeout_seconds == 3
