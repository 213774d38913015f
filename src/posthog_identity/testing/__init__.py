"""Testing your own analytics: a local PostHog sink and its pytest plugin.

`Sink` speaks PostHog's ingestion endpoints and keeps what arrives; the
`posthog_sink` fixture (`plugin`, registered as the pytest plugin
`posthog_identity`) gives a test a `PostHogSink` over a session-wide one.
Names are imported on first use, so loading the plugin costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from posthog_identity.lazy import lazy_exports

if TYPE_CHECKING:
    from .cli import format_event as format_event
    from .fixture import LoginLink as LoginLink
    from .fixture import PostHogSink as PostHogSink
    from .flags import EXAMPLE_FLAG_DEFINITIONS as EXAMPLE_FLAG_DEFINITIONS
    from .flags import FlagValue as FlagValue
    from .protocol import DEFAULT_MAX_BODY_SIZE as DEFAULT_MAX_BODY_SIZE
    from .protocol import Event as Event
    from .server import Sink as Sink

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "EXAMPLE_FLAG_DEFINITIONS",
    "Event",
    "FlagValue",
    "LoginLink",
    "PostHogSink",
    "Sink",
    "format_event",
]

_HOMES = {
    "DEFAULT_MAX_BODY_SIZE": ".protocol",
    "EXAMPLE_FLAG_DEFINITIONS": ".flags",
    "Event": ".protocol",
    "FlagValue": ".flags",
    "LoginLink": ".fixture",
    "PostHogSink": ".fixture",
    "Sink": ".server",
    "format_event": ".cli",
}


__getattr__, __dir__ = lazy_exports(__name__, _HOMES, globals())
