"""PostHog identity, correct by default, for any WSGI or ASGI app."""

from __future__ import annotations

from .identity import Identity as Identity
from .settings import ConfigurationError as ConfigurationError
from .settings import Settings as Settings

__all__ = ["ConfigurationError", "Identity", "Settings"]
__version__ = "0.1.0"
