"""posthog-python's own answer for a flag: a real client with local evaluation, read
the way an app reads it, to compare with what our bootstrap put in the page.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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
