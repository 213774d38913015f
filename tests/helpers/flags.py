"""posthog-python's own answer for a flag: a real client with local evaluation, read
the way an app reads it, to compare with what our bootstrap put in the page; and
posthog's module configured the way an app configures it (`app_configured_posthog`);
`loaded` waits for a client's background load of the definitions to be over.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import posthog
from posthog.client import Client

from tests.helpers.project import API_KEY


@contextmanager
def posthog_client(host: str, **options: Any) -> Iterator[Client]:
    """A real client; with `secret_key` its definitions are loaded before it is used."""
    options.setdefault("flush_interval", 0.05)
    options.setdefault("poll_interval", 3600)  # polled once here; never again during a test
    client = Client(API_KEY, host=host, **options)
    try:
        if "secret_key" in options:
            client.load_feature_flags()
        yield client
    finally:
        client.shutdown()


def sdk_flag(client: Client, key: str, distinct: str) -> Any:
    """What posthog-python's `get_feature_flag` says (deprecated in 7.x, still the SDK's answer)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return client.get_feature_flag(
            key, distinct, only_evaluate_locally=True, send_feature_flag_events=False
        )


def sdk_payload(client: Client, key: str, distinct: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return client.get_feature_flag_payload(key, distinct, only_evaluate_locally=True)


#: The module attributes an app (or the middleware, for flags) may set on posthog.
MODULE_ATTRIBUTES = (
    "api_key",
    "project_api_key",
    "host",
    "secret_key",
    "personal_api_key",
    "feature_flags_request_timeout_seconds",
    "default_client",
)


@contextmanager
def app_configured_posthog(host: str | None = None, **attributes: Any) -> Iterator[None]:
    """posthog's module as an app configures it: ``posthog.api_key`` and ``posthog.host``
    set (with `host`; nothing set without it), plus `attributes`, and no client built yet.

    Every module attribute is restored afterwards; a client built meanwhile is shut down.
    """
    saved = {name: getattr(posthog, name, None) for name in MODULE_ATTRIBUTES}
    for name in MODULE_ATTRIBUTES:
        if name != "feature_flags_request_timeout_seconds" and hasattr(posthog, name):
            setattr(posthog, name, None)
    if host is not None:
        posthog.api_key, posthog.host = API_KEY, host
    for name, value in attributes.items():
        setattr(posthog, name, value)
    try:
        yield
    finally:
        built = posthog.default_client
        if built is not None and built is not saved["default_client"]:
            built.shutdown()
        for name, value in saved.items():
            if hasattr(posthog, name):
                setattr(posthog, name, value)


def loaded(client: Client, timeout: float = 10.0) -> None:
    """Wait until `client` has tried its first load of the definitions and started its
    poller (the middleware has it load in the background at start-up). A client shut
    down before then would start its poller afterwards, polling a sink long stopped."""
    deadline = time.monotonic() + timeout
    while getattr(client, "poller", None) is None:
        assert time.monotonic() < deadline, "the client never loaded its flag definitions"
        time.sleep(0.01)
