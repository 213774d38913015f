"""Apps as a newcomer writes them: wrapped, configured only by environment
variables, capturing with posthog's module-level ``posthog.capture()``.

Nothing here sets ``posthog.api_key`` or builds a client. ``/`` captures
"Home Viewed" and ``/whoami`` answers the request's identity as JSON.
"""

from __future__ import annotations

import json
from typing import Any

import posthog
from flask import Flask

from posthog_identity.asgi import IdentityMiddleware
from posthog_identity.integrations.flask import init_app
from tests.sites.basic import serve_lifespan, whoami

HOME_VIEWED = "Home Viewed"


def flask_factory() -> Flask:
    """A Flask app wrapped with ``init_app(app)``."""
    app = Flask(__name__)

    @app.get("/")
    def home() -> str:
        posthog.capture(HOME_VIEWED)
        return "home"

    @app.get("/whoami")
    def who() -> dict[str, Any]:
        return whoami()

    init_app(app)
    return app


async def _plain_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    if scope["path"] == "/":
        posthog.capture(HOME_VIEWED)
    body = json.dumps(whoami()).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def asgi_factory() -> IdentityMiddleware:
    """A raw ASGI app wrapped with ``IdentityMiddleware(app)``."""
    return IdentityMiddleware(_plain_asgi)
