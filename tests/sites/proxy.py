"""The site the proxy tests run under real servers: the first-party proxy on `/ingest`.

Configured by environment variables only (``POSTHOG_IDENTITY_PROXY_PATH`` and the
proxy's bounds), forwarding to ``POSTHOG_HOST``. Every other path is the app's
own and answers ``app``.
"""

from __future__ import annotations

from typing import Any

from posthog_identity.asgi import IdentityMiddleware as ASGIIdentityMiddleware
from posthog_identity.settings import Settings
from posthog_identity.wsgi import IdentityMiddleware as WSGIIdentityMiddleware

OWN_ANSWER = b"app"


def wsgi_factory() -> Any:
    """For gunicorn: ``'tests.sites.proxy:wsgi_factory()'``."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [OWN_ANSWER]

    return WSGIIdentityMiddleware(app, Settings.from_env())


def asgi_factory() -> Any:
    """For uvicorn: ``--factory tests.sites.proxy:asgi_factory``."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": OWN_ANSWER})

    return ASGIIdentityMiddleware(app, Settings.from_env())
