"""The site the concurrency isolation tests run under real servers.

One small site, as a plain WSGI app (gunicorn) and a Starlette app (uvicorn,
hypercorn), behind posthog_identity's middleware and configured by environment
variables like `tests.sites.basic`. Every route answers an HTML page, so the response
carries the bootstrapped snippet, and echoes what `current_identity()` said
inside the app. Every route that captures tags its event with the request's
``marker`` query parameter, so the test can map each event that reached the
sink back to the one request that made it.

Routes (GET):

- ``/page?marker=M``: captures "Page Viewed" (ASGI: an async endpoint);
- ``/sync-page?marker=M``: the same from a sync endpoint (ASGI: Starlette runs
  it in its thread pool);
- ``/login?user=U&marker=M``: ``identify_user(U)``, captures "Logged In"
  (ASGI: a sync endpoint, so identify_user runs in the thread pool);
- ``/logout?marker=M``: ``forget_user()``, captures "Logged Out";
- ``/ready``: answers the ``CONCURRENCY_READY_TOKEN`` environment variable, so
  the test knows the server on the port is its own.

Who is logged in comes from the ``X-User`` request header through the
``user_id`` callback; absent means nobody.

The site captures with its own posthog client (sending every 0.1 s), given to
the middleware; with ``CONCURRENCY_APP_CLIENT=engine`` it gives none and
captures with the one the middleware builds from the settings, the library's
default (`tests.robustness.test_posthog_faults` runs it so under a failing PostHog).
"""

from __future__ import annotations

import html
import json
import os
from typing import Any
from urllib.parse import parse_qs

import posthog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse
from starlette.routing import Route

from posthog_identity import current_identity, forget_user, identify_user
from posthog_identity.asgi import IdentityMiddleware as ASGIIdentityMiddleware
from posthog_identity.settings import Settings
from posthog_identity.wsgi import IdentityMiddleware as WSGIIdentityMiddleware

READY_TOKEN_VARIABLE = "CONCURRENCY_READY_TOKEN"
CLIENT_VARIABLE = "CONCURRENCY_APP_CLIENT"
#: The element whose text is the JSON of `current_identity()` inside the app.
WHO_OPEN = '<pre id="who">'
WHO_CLOSE = "</pre>"

_EVENTS = {
    "/page": "Page Viewed",
    "/sync-page": "Page Viewed",
    "/login": "Logged In",
    "/logout": "Logged Out",
}


def _who() -> dict[str, Any] | None:
    identity = current_identity()
    if identity is None:
        return None
    return {
        "anonymous_id": identity.anonymous_id,
        "user_id": identity.user_id,
        "distinct_id": identity.distinct_id,
    }


def _page(title: str) -> bytes:
    who = html.escape(json.dumps(_who()), quote=False)
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=utf-8>\n"
        f"<title>{title}</title>\n</head>\n<body>\n"
        f"{WHO_OPEN}{who}{WHO_CLOSE}\n</body>\n</html>\n"
    ).encode()


def _handle(client: posthog.Client, path: str, params: dict[str, str]) -> bytes:
    """What every route does, whichever protocol it arrived by."""
    if path == "/login":
        identify_user(params["user"])
    elif path == "/logout":
        forget_user()
    client.capture(_EVENTS[path], properties={"marker": params["marker"]})
    return _page(path)


def _user(value: str | None) -> str | None:
    return value or None


def _client(settings: Settings) -> posthog.Client | None:
    if os.environ.get(CLIENT_VARIABLE) == "engine":
        return None
    # Sends often, so the test does not wait long for the last events.
    return posthog.Client(settings.api_key or "", host=settings.host, flush_interval=0.1)


def _capturing_client(middleware: Any) -> posthog.Client:
    client = middleware.engine.client
    assert client is not None, "no PostHog API key"
    return client


def _ready_token() -> bytes:
    return os.environ.get(READY_TOKEN_VARIABLE, "").encode()


def wsgi_factory() -> Any:
    """For gunicorn: ``'tests.sites.concurrency:wsgi_factory()'``."""
    settings = Settings.from_env()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/ready":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [_ready_token()]
        if path not in _EVENTS:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        params = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        body = _handle(_capturing_client(middleware), path, params)
        start_response(
            "200 OK",
            [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]

    def user_id(environ: dict[str, Any]) -> str | None:
        return _user(environ.get("HTTP_X_USER"))

    middleware = WSGIIdentityMiddleware(app, settings, user_id=user_id, client=_client(settings))
    return middleware


def asgi_factory() -> Any:
    """For uvicorn (``--factory``) and hypercorn (``'tests.sites.concurrency:asgi_factory()'``)."""
    settings = Settings.from_env()

    def respond(request: Request) -> HTMLResponse:
        client = _capturing_client(middleware)
        body = _handle(client, request.url.path, dict(request.query_params))
        return HTMLResponse(body)

    async def page(request: Request) -> HTMLResponse:
        return respond(request)

    def sync_page(request: Request) -> HTMLResponse:
        return respond(request)

    async def ready(request: Request) -> PlainTextResponse:
        return PlainTextResponse(_ready_token())

    app = Starlette(
        routes=[
            Route("/page", page),
            Route("/sync-page", sync_page),
            Route("/login", sync_page),
            Route("/logout", page),
            Route("/ready", ready),
        ]
    )

    def user_id(scope: dict[str, Any]) -> str | None:
        for name, value in scope["headers"]:
            if name == b"x-user":
                return _user(value.decode("latin-1"))
        return None

    middleware = ASGIIdentityMiddleware(app, settings, user_id=user_id, client=_client(settings))
    return middleware
