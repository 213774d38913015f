"""Celery glue: `posthog_identity.integrations.celery.instrument`, as specifications.

It turns on posthog's own Celery integration with the client the middleware
would use. That a task enqueued during a request then captures as the request,
with a real worker, is in `tests/servers/test_jobs.py`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import posthog
import pytest
from celery import Celery
from posthog.integrations.celery import PosthogCeleryIntegration

from posthog_identity.integrations.celery import instrument
from posthog_identity.settings import ConfigurationError, Settings
from posthog_identity.signing import CookieCodec, CookieState
from posthog_identity.wsgi import IdentityMiddleware as WSGIMiddleware
from tests.helpers.drivers import call_wsgi
from tests.helpers.project import API_KEY
from tests.helpers.wire import COOKIE, PERSONLESS

if TYPE_CHECKING:
    from posthog_identity.testing import Sink

SESSION = "0190a4b2-7c3e-7d41-8b2a-5f6e7d8c9b0a"


@pytest.fixture
def instrumented() -> Iterator[list[PosthogCeleryIntegration]]:
    """The integrations a test turned on, off again after it (Celery's signals are global)."""
    made: list[PosthogCeleryIntegration] = []
    yield made
    for integration in made:
        integration.uninstrument()


def test_it_sends_through_the_client_given(
    settings: Settings, client: posthog.Client, instrumented: list[PosthogCeleryIntegration]
) -> None:
    instrumented.append(instrument(settings=settings, client=client))

    assert instrumented[0].client is client


def test_with_only_settings_it_builds_the_client_and_makes_it_posthogs_default(
    settings: Settings, instrumented: list[PosthogCeleryIntegration]
) -> None:
    posthog.default_client = None

    instrumented.append(instrument(settings=settings))

    built = instrumented[0].client
    assert built is not None
    assert built.api_key == API_KEY
    assert posthog.default_client is built  # so posthog.capture() in a task reaches PostHog


def test_in_a_worker_without_a_secret_it_builds_the_client_from_the_environment(
    sink: Sink, monkeypatch: pytest.MonkeyPatch, instrumented: list[PosthogCeleryIntegration]
) -> None:
    # A worker signs no cookie: its environment may hold only PostHog's key and host.
    monkeypatch.setattr(posthog, "default_client", None)
    monkeypatch.setattr(posthog, "api_key", None)
    monkeypatch.setenv("POSTHOG_API_KEY", API_KEY)
    monkeypatch.setenv("POSTHOG_HOST", sink.url)
    monkeypatch.delenv("POSTHOG_IDENTITY_SECRET", raising=False)

    instrumented.append(instrument())

    built = instrumented[0].client
    assert built is not None
    assert (built.api_key, built.host) == (API_KEY, sink.url)
    built.shutdown()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        pytest.param("POSTHOG_IDENTITY_CAPTURE_EXCEPTIONS", "maybe", id="without-a-secret"),
        pytest.param("POSTHOG_IDENTITY_SECRET", ",", id="a-secret-set-is-checked"),
    ],
)
def test_in_a_worker_an_invalid_variable_still_fails_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv("POSTHOG_API_KEY", API_KEY)
    monkeypatch.delenv("POSTHOG_IDENTITY_SECRET", raising=False)
    monkeypatch.setenv(variable, value)

    with pytest.raises(ConfigurationError, match=variable):
        instrument()


def test_a_task_published_during_a_request_carries_its_distinct_id_and_session(
    settings: Settings, client: posthog.Client, instrumented: list[PosthogCeleryIntegration]
) -> None:
    instrumented.append(instrument(settings=settings, client=client))
    jobs = Celery("unit", broker="memory://", set_as_current=False)
    anonymous_id = str(uuid.uuid4())
    state = CookieState(anonymous_id, None, False, int(time.time()))

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        jobs.send_task("unit.job", args=("x",))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"queued"]

    headers = {
        "Cookie": f"{COOKIE}={CookieCodec(settings.secrets).dumps(state)}",
        "X-POSTHOG-SESSION-ID": SESSION,
    }
    call_wsgi(WSGIMiddleware(app, settings, client=client), "GET", "/", headers)

    with jobs.connection_for_read() as connection:
        queue = connection.SimpleQueue("celery")
        message = queue.get(timeout=5)
        queue.close()
    carried = message.headers["headers"]  # where the worker reads them (celery#4875)
    assert carried["X-POSTHOG-DISTINCT-ID"] == anonymous_id
    assert carried["X-POSTHOG-SESSION-ID"] == SESSION
    assert json.loads(carried["X-POSTHOG-CONTEXT-TAGS"])[PERSONLESS] is False


def test_options_reach_posthogs_integration(
    settings: Settings, client: posthog.Client, instrumented: list[PosthogCeleryIntegration]
) -> None:
    instrumented.append(
        instrument(settings=settings, client=client, capture_task_lifecycle_events=False)
    )

    assert instrumented[0].capture_task_lifecycle_events is False


@pytest.mark.parametrize(
    ("configured", "passed", "expected"),
    [
        pytest.param(True, None, True, id="on-by-default"),
        pytest.param(False, None, False, id="off-in-the-settings-covers-tasks"),
        pytest.param(False, True, True, id="the-caller-wins-on"),
        pytest.param(True, False, False, id="the-caller-wins-off"),
    ],
)
def test_task_error_capture_follows_the_settings_unless_the_caller_says(
    settings: Settings,
    client: posthog.Client,
    instrumented: list[PosthogCeleryIntegration],
    configured: bool,
    passed: bool | None,
    expected: bool,
) -> None:
    options = {} if passed is None else {"capture_exceptions": passed}
    configured_settings = replace(settings, capture_exceptions=configured)

    instrumented.append(instrument(settings=configured_settings, client=client, **options))

    assert instrumented[0].capture_exceptions is expected
