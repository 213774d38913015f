"""PostHog identity, correct by default, for any WSGI or ASGI app."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import current_identity as current_identity
    from .context import forget_user as forget_user
    from .context import grant_consent as grant_consent
    from .context import identify_user as identify_user
    from .context import revoke_consent as revoke_consent
    from .flags import FlagContext as FlagContext
    from .identity import NOBODY as NOBODY
    from .identity import NOTHING as NOTHING
    from .identity import Identity as Identity
    from .settings import ConfigurationError as ConfigurationError
    from .settings import Settings as Settings

__all__ = [
    "NOBODY",
    "NOTHING",
    "ConfigurationError",
    "FlagContext",
    "Identity",
    "Settings",
    "current_identity",
    "forget_user",
    "grant_consent",
    "identify_user",
    "revoke_consent",
]
__version__ = "0.1.0"

_HOMES = {
    "current_identity": ".context",
    "forget_user": ".context",
    "grant_consent": ".context",
    "identify_user": ".context",
    "revoke_consent": ".context",
    "FlagContext": ".flags",
    "NOBODY": ".identity",
    "NOTHING": ".identity",
    "Identity": ".identity",
    "ConfigurationError": ".settings",
    "Settings": ".settings",
}


def __getattr__(name: str) -> Any:
    # PEP 562: the pytest plugin (`posthog_identity.testing.plugin`) is loaded by
    # every pytest run in an environment that has this package, which imports
    # this module; posthog (~150 ms) waits until a name here is used.
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
