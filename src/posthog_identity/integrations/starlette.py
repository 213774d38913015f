"""Starlette: install the middleware so a bad configuration fails at import, and
the request's identity in an endpoint, whatever the middleware order.

``install(app)`` reads the settings now and adds the middleware, outermost.
Starlette builds its middleware only on the first ASGI call (the lifespan
startup), and uvicorn's default ``--lifespan auto`` takes an exception there
for "lifespan unsupported" and serves every request a 500: reading the
settings at import makes the server exit before serving, naming the variable.

The middleware reads ``scope["user"]`` when the request starts and again when
the response starts. When Starlette's ``AuthenticationMiddleware`` runs
*inside* ours, the user is only known once it has run; calling
`request_identity` in the endpoint reports it right away, so server captures
made in the endpoint already carry the user id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

# Imported at run time: FastAPI reads this annotation to inject the request.
from starlette.requests import HTTPConnection

from posthog_identity.asgi import IdentityMiddleware, UserIdCallback, starlette_user
from posthog_identity.context import current_identity, report_user
from posthog_identity.settings import Settings

if TYPE_CHECKING:
    from posthog.client import Client
    from starlette.applications import Starlette

    from posthog_identity.consent import ConsentHook
    from posthog_identity.flags import FlagContextHook
    from posthog_identity.identity import Identity

__all__ = ["install", "request_identity"]


def install(
    app: Starlette,
    *,
    settings: Settings | None = None,
    user_id: UserIdCallback | None = None,
    client: Client | None = None,
    init_options: Mapping[str, Any] | None = None,
    flag_context: FlagContextHook | None = None,
    consent: ConsentHook | None = None,
) -> Settings:
    """Add `IdentityMiddleware` around everything added so far; return its settings.

    The settings (default ``Settings.from_env()``) and `init_options` are read
    and validated here, so an invalid configuration raises `ConfigurationError`
    while the app module is imported. The other options are those of
    `posthog_identity.asgi.IdentityMiddleware`. Call it after your other
    ``add_middleware`` calls: the last one added runs first.
    """
    settings = Settings.from_env() if settings is None else settings
    if init_options:
        settings = replace(settings, init_options={**settings.init_options, **init_options})
    app.add_middleware(
        IdentityMiddleware,
        settings,
        user_id=user_id,
        client=client,
        flag_context=flag_context,
        consent=consent,
    )
    return settings


def request_identity(request: HTTPConnection) -> Identity | None:
    """The current `Identity`, after reporting the authenticated user if there is one.

    None outside the middleware (not installed, or the path is excluded).
    """
    if "user" in request.scope:
        report_user(starlette_user(request.scope["user"]))
    return current_identity()
