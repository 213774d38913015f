"""The site the outage tests run under real servers: visitors log in while PostHog is down.

Routes: ``/whoami`` (answers once the server is up; mints the identity cookie),
``/login?user=U`` (``identify_user(U)``: the login link), ``/pending`` (how many
failed links the resender keeps, as a number). The middleware builds its own
client from the environment, the default set-up. ``OUTAGE_RESEND_POLICY`` =
``first_delay,max_delay,max_pending`` replaces the resender's schedule, so
most tests need not wait out the real one.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs

from posthog_identity import identify_user
from posthog_identity.asgi import IdentityMiddleware as ASGIIdentityMiddleware
from posthog_identity.settings import Settings
from posthog_identity.wsgi import IdentityMiddleware as WSGIIdentityMiddleware

POLICY_VARIABLE = "OUTAGE_RESEND_POLICY"


def _apply_policy() -> None:
    value = os.environ.get(POLICY_VARIABLE)
    if value:
        from posthog_identity import resend

        first, most, pending = value.split(",")
        resend.POLICY = resend.Policy(
            first_delay=float(first), max_delay=float(most), max_pending=int(pending)
        )


def _pending(middleware: Any) -> int:
    from posthog_identity.resend import resender_for

    client = middleware.engine.client
    resender = None if client is None else resender_for(client)
    return -1 if resender is None else len(resender)


def _route(middleware: Any, path: str, query: str) -> bytes:
    if path == "/login":
        identify_user(parse_qs(query)["user"][0])
        return b"logged in"
    if path == "/pending":
        return str(_pending(middleware)).encode()
    return b"ok"


def wsgi_factory() -> Any:
    """For gunicorn: ``'tests.sites.outage:wsgi_factory()'``."""
    _apply_policy()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = _route(middleware, environ["PATH_INFO"], environ.get("QUERY_STRING", ""))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    middleware = WSGIIdentityMiddleware(app, Settings.from_env(), user_id=lambda environ: None)
    return middleware


def asgi_factory() -> Any:
    """For uvicorn: ``--factory tests.sites.outage:asgi_factory``."""
    _apply_policy()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        body = _route(middleware, scope["path"], scope["query_string"].decode())
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    middleware = ASGIIdentityMiddleware(app, Settings.from_env(), user_id=lambda scope: None)
    return middleware
