"""posthog-js's persistence cookie as the browser sends it: named for the test project
(`PERSISTENCE`), holding a session (`SESSION` by default), URI-encoded JSON."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from tests.helpers.project import API_KEY

SESSION = "0193a6b2-7c1e-7a1b-9c2d-3e4f5a6b7c8d"
PERSISTENCE = f"ph_{API_KEY}_posthog"


def posthog_js_cookie(session: str = SESSION, **extra: Any) -> str:
    """posthog-js's persistence cookie as the browser sends it (encodeURIComponent(JSON))."""
    value = {
        "distinct_id": "0193a6b2-0000-7000-8000-000000000000",
        "$sesid": [1733245670123, session, 1733245600000],
        "$device_id": "0193a6b2-0000-7000-8000-000000000000",
        **extra,
    }
    return f"{PERSISTENCE}={quote(json.dumps(value, separators=(',', ':')), safe='')}"
