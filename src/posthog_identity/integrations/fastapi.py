"""FastAPI: ``install(app)``, and the request's identity as a dependency.

::

    from posthog_identity.integrations.fastapi import CurrentIdentity, install

    app = FastAPI()
    install(app)  # reads the settings now: a bad configuration fails at import

    @app.get("/")
    def home(identity: CurrentIdentity):
        return {"distinct_id": identity.distinct_id if identity else None}
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from posthog_identity.identity import Identity
from posthog_identity.integrations.starlette import install, request_identity

__all__ = ["CurrentIdentity", "install", "request_identity"]

#: An endpoint parameter typed ``CurrentIdentity`` receives the request's
#: `Identity` (None outside the middleware), with the authenticated user reported.
CurrentIdentity = Annotated[Identity | None, Depends(request_identity)]
