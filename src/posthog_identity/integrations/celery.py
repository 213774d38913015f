"""Celery glue: posthog's Celery integration, on the client the middleware uses.

posthog-python's ``PosthogCeleryIntegration`` (posthog 7.15 and later) puts
posthog's context (distinct id, session id, tags) into the headers of every
task published and restores it in the worker around the task. A task enqueued
during a request therefore captures as that request. `instrument` turns it on
with the process's one posthog client, the one the middleware would pick;
a worker process never builds a middleware, so without it a worker configured
by environment variables only would have no client at all.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from posthog_identity.client import process_client
from posthog_identity.settings import ENV_VARS, Settings

try:
    from posthog.integrations.celery import PosthogCeleryIntegration
except ImportError as error:  # pragma: no cover - depends on the installed posthog
    raise ImportError(
        "posthog_identity.integrations.celery needs posthog 7.15 or later "
        "(posthog.integrations.celery): pip install 'posthog>=7.15'"
    ) from error

if TYPE_CHECKING:
    from posthog.client import Client

__all__ = ["instrument"]


def instrument(
    *, settings: Settings | None = None, client: Client | None = None, **options: Any
) -> PosthogCeleryIntegration:
    """Turn on posthog's Celery integration; call it in the web and the worker processes.

    The client is the one the middleware uses: `client` when given, else
    posthog's module client when the app configured it, else one built from
    the settings (default ``Settings.from_env()``, where a worker may leave
    ``POSTHOG_IDENTITY_SECRET`` unset: it signs no cookie) that becomes
    posthog's default client, so ``posthog.capture()`` in a task reaches PostHog.

    :param options: passed to ``PosthogCeleryIntegration`` (``capture_exceptions``,
        ``capture_task_lifecycle_events``, ``task_filter``...); ``capture_exceptions``
        defaults to the settings' (``POSTHOG_IDENTITY_CAPTURE_EXCEPTIONS``), so
        turning error capture off covers a failing task too.
    """
    settings = _from_env() if settings is None else settings
    used = process_client(settings, client)
    options.setdefault("capture_exceptions", settings.capture_exceptions)
    integration = PosthogCeleryIntegration(client=used, **options)
    integration.instrument()
    return integration


def _from_env() -> Settings:
    """The environment's settings, every value checked as the middleware checks it;
    without a secret (a worker's environment may lack it) a stand-in that signs nothing."""
    if os.environ.get(ENV_VARS["secrets"], "").strip():
        return Settings.from_env()
    return Settings.from_env(secrets=("unused: a worker signs no cookie",))
