"""The apps `servers.py` runs under uvicorn and gunicorn: a small HTML page, bare and
wrapped, and a JSON API call, bare, through ours and through posthog's own middleware.

Imported by the server processes (``--app-dir bench`` / ``--pythonpath bench``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from common import JSON_BODY, html_page, offline_client, posthog_peer, settings
from posthog_identity import asgi as identity_asgi
from posthog_identity import wsgi as identity_wsgi

PAGE_SIZE = 2 * 1024
PAGE = html_page(PAGE_SIZE)
_LENGTH = str(len(PAGE))
_ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


def _asgi(body: bytes, content_type: bytes) -> _ASGIApp:
    """A bare ASGI endpoint answering `body`, with its length."""
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


asgi_bare = _asgi(PAGE, b"text/html; charset=utf-8")


def wsgi_bare(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response(
        "200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", _LENGTH)]
    )
    return [PAGE]


asgi_wrapped = identity_asgi.IdentityMiddleware(asgi_bare, settings(), client=offline_client())
wsgi_wrapped = identity_wsgi.IdentityMiddleware(wsgi_bare, settings(), client=offline_client())

# The API case: a returning visitor's JSON call, bare, through ours and through
# posthog's own middleware, so the per-request cost is compared under a server.
asgi_json_bare = _asgi(JSON_BODY, b"application/json")
asgi_json_ours = identity_asgi.IdentityMiddleware(
    asgi_json_bare, settings(), client=offline_client()
)
asgi_json_peer = posthog_peer(asgi_json_bare)
