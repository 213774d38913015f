"""The apps `servers.py` runs under uvicorn and gunicorn: a small HTML page, bare,
wrapped and through the page's floor, and a JSON API call, bare, through ours and
through posthog's own middleware.

Imported by the server processes (``--app-dir bench`` / ``--pythonpath bench``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import posthog

from common import FLOOR_ID, JSON_BODY, html_page, offline_client, posthog_peer, settings
from posthog_identity import asgi as identity_asgi
from posthog_identity import wsgi as identity_wsgi
from posthog_identity.identity import Identity

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

# The page's floor: the least any middleware doing this job does per page. posthog's
# public context around the app, and the same snippet rendered for the visitor and put
# before </head> with one replace over the whole body, its Content-Length corrected.
# It reads no cookie, resolves no identity, streams nothing, and checks no CSP nonce,
# status, method or cache header: it does less than the job, never more.
assert wsgi_wrapped.engine.snippet is not None
_render = wsgi_wrapped.engine.snippet.render
_VISITOR = Identity(FLOOR_ID)


def _floor_page(body: bytes) -> bytes:
    return body.replace(b"</head>", _render(_VISITOR) + b"</head>", 1)


async def asgi_floor(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    with posthog.new_context(fresh=True, capture_exceptions=False):
        posthog.identify_context(FLOOR_ID)
        held: list[MutableMapping[str, Any]] = []

        async def hold(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                held.append(message)
                return
            page = _floor_page(message["body"])  # the bare app sends one body message
            start = held.pop()
            headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
            headers.append((b"content-length", str(len(page)).encode()))
            await send({**start, "headers": headers})
            await send({**message, "body": page})

        await asgi_bare(scope, receive, hold)


def wsgi_floor(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    with posthog.new_context(fresh=True, capture_exceptions=False):
        posthog.identify_context(FLOOR_ID)
        held: list[Any] = []

        def hold(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            held[:] = (status, headers)
            return None

        page = _floor_page(b"".join(wsgi_bare(environ, hold)))
        status, headers = held
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        start_response(status, [*headers, ("Content-Length", str(len(page)))])
        return [page]


# The API case: a returning visitor's JSON call, bare, through ours and through
# posthog's own middleware, so the per-request cost is compared under a server.
asgi_json_bare = _asgi(JSON_BODY, b"application/json")
asgi_json_ours = identity_asgi.IdentityMiddleware(
    asgi_json_bare, settings(), client=offline_client()
)
asgi_json_peer = posthog_peer(asgi_json_bare)
