"""A JSON API for a single-page app on another origin, wired with posthog-identity.

The page (``examples/spa/index.html``) is static: a plain file server on its
own origin serves it, and posthog-js in it keeps its own anonymous id. With
``tracing_headers`` listing this API's host, posthog-js sends that id on every
fetch (``X-POSTHOG-DISTINCT-ID``, with ``X-POSTHOG-SESSION-ID`` and
``X-POSTHOG-WINDOW-ID``); the middleware adopts it, so the API's captures land
on the browser's own person and session. Run from the repository root, with
a local PostHog stand-in:

    posthog-identity sink &
    POSTHOG_IDENTITY_SECRET="$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')" \
    POSTHOG_API_KEY=phc_local POSTHOG_HOST=http://127.0.0.1:8010 \
    uvicorn examples.spa.api:app
    python3 -m http.server 5173 --bind 127.0.0.1 --directory examples/spa

and open http://localhost:5173/ (another site than the API's 127.0.0.1:8000).

Who is signed in: a login answers with a signed token, which a page on
another site sends back as ``Authorization: Bearer``; it also sets a session
cookie, which a page on the same site sends with ``credentials: "include"``.
The ``user_id`` callback reads either, on every request.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import posthog
from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from itsdangerous import BadSignature, URLSafeSerializer
from starlette.requests import cookie_parser

from posthog_identity import current_identity, forget_user, identify_user
from posthog_identity.integrations.fastapi import install

# Signs the tokens and the session cookie. A random one signs everybody out on
# restart and breaks with several workers: set SESSION_SECRET in production.
_TOKENS = URLSafeSerializer(
    os.environ.get("SESSION_SECRET") or secrets.token_hex(32), salt="spa-example-login"
)
SESSION_COOKIE = "spa_session"
#: The page's origins: the file server, by both names it answers to.
SPA_ORIGINS = os.environ.get("SPA_ORIGINS", "http://localhost:5173,http://127.0.0.1:5173")


def _verified(token: str) -> str | None:
    try:
        name = _TOKENS.loads(token)
    except BadSignature:
        return None
    return name if isinstance(name, str) and name else None


def signed_in_user(scope: dict[str, Any]) -> str | None:
    """The user a request's bearer token, else its session cookie, names; None: nobody."""
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return _verified(token)
    session = cookie_parser(headers.get("cookie", "")).get(SESSION_COOKIE)
    return _verified(session) if session else None


app = FastAPI()
app.add_middleware(
    CORSMiddleware,
    allow_origins=[origin.strip() for origin in SPA_ORIGINS.split(",") if origin.strip()],
    allow_methods=["GET", "POST"],
    # posthog-js's tracing headers, and what the page itself sends.
    allow_headers=[
        "X-POSTHOG-DISTINCT-ID",
        "X-POSTHOG-SESSION-ID",
        "X-POSTHOG-WINDOW-ID",
        "Authorization",
        "Content-Type",
    ],
    # Only for a page on the same site that signs in with the session cookie
    # (fetch with credentials: "include"); a bearer token needs no credentials.
    allow_credentials=True,
)
# Last: the outermost middleware. CORS preflights pass through it untouched;
# `signed_in_user` tells it who is signed in on every request.
install(app, user_id=signed_in_user)


@app.get("/api/hello")
def hello() -> dict[str, Any]:
    # No distinct_id: the request's, the browser's own anonymous id or the user.
    posthog.capture("api called", properties={"endpoint": "hello"})
    identity = current_identity()
    return {"distinct_id": identity.distinct_id if identity else None}


@app.post("/api/login")
async def login(request: Request, response: Response) -> dict[str, Any]:
    # Any name signs in: this example checks no password.
    body = await request.json()
    name = str(body.get("name", "")).strip()[:64] if isinstance(body, dict) else ""
    if not name:
        response.status_code = 400
        return {"error": "a name is required"}
    token = _TOKENS.dumps(name)
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="lax")
    identify_user(name)  # links the browser's anonymous id into the user, once
    posthog.capture("logged in")
    return {"user": name, "token": token}


@app.post("/api/logout")
def logout(response: Response) -> dict[str, Any]:
    response.delete_cookie(SESSION_COOKIE)
    forget_user()  # the page calls posthog.reset(): its next id is the next visitor's
    return {"user": None}


@app.get("/whoami")
def whoami() -> dict[str, Any]:
    identity = current_identity()
    if identity is None:
        return {"distinct_id": None}
    return {
        "distinct_id": identity.distinct_id,
        "anonymous_id": identity.anonymous_id,
        "user_id": identity.user_id,
        "is_identified": identity.is_identified,
    }
