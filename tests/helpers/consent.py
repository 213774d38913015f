"""Consent in tests: the four consent states by their short names, and settings for one
consent mode (the test secret, the other settings as given)."""

from __future__ import annotations

from typing import Any

from posthog_identity.consent import ConsentState
from posthog_identity.settings import Settings
from tests.helpers.project import SECRET

GRANTED, PENDING, DENIED, UNKNOWN = (
    ConsentState.GRANTED,
    ConsentState.PENDING,
    ConsentState.DENIED,
    ConsentState.UNKNOWN,
)


def settings_for(mode: str, **changes: Any) -> Settings:
    return Settings(secrets=(SECRET,), consent=mode, **changes)  # type: ignore[arg-type]
