"""PostHog identity, correct by default, for any WSGI or ASGI app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _HOMES, globals())
