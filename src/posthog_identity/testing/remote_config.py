"""posthog-js's remote config (`/array/<token>/config.js`) for a project with every product off."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from posthog_identity.snippet import script_json

__all__ = ["remote_config", "remote_config_script"]


def remote_config(token: str, *, has_feature_flags: bool) -> dict[str, Any]:
    """The remote config of an empty project: every product off.

    posthog-js 1.449 reads these keys (each extension's `onRemoteConfig`);
    a missing key would leave the extension waiting or on its persisted state.
    """
    return {
        "token": token,
        "supportedCompression": ["gzip", "gzip-js"],
        # Like PostHog: false when the project has no flags, and then
        # posthog-js skips its first `/flags` request.
        "hasFeatureFlags": has_feature_flags,
        "captureDeadClicks": False,
        "capturePerformance": False,
        "autocapture_opt_out": False,
        "autocaptureExceptions": False,
        "analytics": {"endpoint": "/e/"},
        "elementsChainAsString": True,
        "errorTracking": {"autocaptureExceptions": False, "suppressionRules": []},
        "logs": {"captureConsoleLogs": False},
        "sessionRecording": False,
        "heatmaps": False,
        "conversations": False,
        "surveys": False,
        "productTours": False,
        "defaultIdentifiedOnly": True,
        "siteApps": [],
    }


def remote_config_script(token: str, config: Mapping[str, Any]) -> str:
    """The shape of PostHog's `config.js`: remote-config.js reads
    `window._POSTHOG_REMOTE_CONFIG[token].config`."""
    return (
        "(function () {\n"
        "  window._POSTHOG_REMOTE_CONFIG = window._POSTHOG_REMOTE_CONFIG || {};\n"
        f"  window._POSTHOG_REMOTE_CONFIG[{script_json(token)}] = "
        f"{{config: {script_json(config)}, siteApps: []}};\n"
        "})();\n"
    )
