"""Starlette: the request's identity in an endpoint, whatever the middleware order.

``app.add_middleware(IdentityMiddleware)`` reads ``scope["user"]`` when the
request starts and again when the response starts. When Starlette's
``AuthenticationMiddleware`` runs *inside* ours, the user is only known once it
has run; calling `request_identity` in the endpoint reports it right away, so
server captures made in the endpoint already carry the user id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# Imported at run time: FastAPI reads this annotation to inject the request.
from starlette.requests import HTTPConnection

from posthog_identity.asgi import starlette_user
from posthog_identity.context import current_identity, report_user

if TYPE_CHECKING:
    from posthog_identity.identity import Identity

__all__ = ["request_identity"]


def request_identity(request: HTTPConnection) -> Identity | None:
    """The current `Identity`, after reporting the authenticated user if there is one.

    None outside the middleware (not installed, or the path is excluded).
    """
    if "user" in request.scope:
        report_user(starlette_user(request.scope["user"]))
    return current_identity()
