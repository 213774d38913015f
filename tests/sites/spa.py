"""The JSON API a single-page app on another origin calls, for the SPA browser tests.

The same API in FastAPI (``asgi_factory``, for uvicorn) and Flask
(``wsgi_factory()``, for gunicorn), with the routes of ``examples/spa/api.py``,
which ``examples/spa/index.html`` calls:

- ``GET /api/hello``: captures "API Called" server-side, with ``posthog.capture``;
- ``POST /api/login`` (JSON ``{"name": ...}``): answers ``{"user", "token"}`` and
  sets the session cookie ``spa_session``;
- ``POST /api/logout``: clears the session cookie;
- ``GET /whoami``: 200, the servers' readiness probe.

Who is signed in: the bearer token (a page on another site), else the session
cookie (a page on the same site, ``credentials: "include"``). CORS allows the
origins in ``SPA_ORIGINS`` (comma-separated), posthog-js's ``X-POSTHOG-*``
headers and credentials: Starlette's ``CORSMiddleware``, flask-cors.

``SPA_SITE_MIDDLEWARE`` picks what joins server events to the browser:
``ours`` (posthog-identity: ``install`` / ``init_app`` with a ``user_id``
callback, and ``identify_user``/``forget_user`` at login and logout) or
``peer`` (posthog-python's own ``PosthogASGIMiddleware`` /
``PosthogFlaskIntegration``). Either way posthog's module client is built
from ``POSTHOG_API_KEY`` and ``POSTHOG_HOST``, and the middleware uses it. The
browser's user agent ends with ``PHIdentityE2E/<tag>``: captures copy the tag
into ``e2e_browser``.
"""

from __future__ import annotations

import os
import re
from typing import Any

import posthog
from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from itsdangerous import BadSignature, URLSafeSerializer
from starlette.requests import cookie_parser

from posthog_identity import forget_user, identify_user

SESSION_COOKIE = "spa_session"
API_CALLED = "API Called"
#: posthog-js's tracing headers, and what the page itself sends.
ALLOWED_HEADERS = [
    "X-POSTHOG-DISTINCT-ID",
    "X-POSTHOG-SESSION-ID",
    "X-POSTHOG-WINDOW-ID",
    "Authorization",
    "Content-Type",
]
_TOKENS = URLSafeSerializer("spa-site-session-secret", salt="spa-site-login")
_TAG = re.compile(r"PHIdentityE2E/([0-9a-f]+)")


def _ours() -> bool:
    chosen = os.environ.get("SPA_SITE_MIDDLEWARE", "ours")
    assert chosen in ("ours", "peer"), f"SPA_SITE_MIDDLEWARE={chosen!r}: ours or peer"
    return chosen == "ours"


def _origins() -> list[str]:
    return [origin.strip() for origin in os.environ["SPA_ORIGINS"].split(",") if origin.strip()]


def _configure_posthog_module() -> None:
    """posthog's module client, from the environment, sending each event at once
    (its default waits up to 5 s); the middleware, ours or the peer's, uses it."""
    posthog.default_client = posthog.Client(
        os.environ["POSTHOG_API_KEY"], host=os.environ["POSTHOG_HOST"], flush_interval=0.05
    )


def user_of(authorization: str, session: str | None) -> str | None:
    """Who the bearer token, else the session cookie, names; None: nobody."""
    scheme, _, token = authorization.partition(" ")
    found = token if scheme.lower() == "bearer" and token else session
    if not found:
        return None
    try:
        name = _TOKENS.loads(found)
    except BadSignature:
        return None
    return name if isinstance(name, str) and name else None


def _capture(user_agent: str) -> None:
    tag = _TAG.search(user_agent)
    posthog.capture(API_CALLED, properties={"e2e_browser": tag and tag[1]})


def _signed_in(name: str) -> dict[str, str]:
    if _ours():
        identify_user(name)
    return {"user": name, "token": _TOKENS.dumps(name)}


def _signed_out() -> None:
    if _ours():
        forget_user()


# ---------------------------------------------------------------------------
# FastAPI, for uvicorn


def asgi_factory() -> Any:
    """For uvicorn: ``--factory tests.sites.spa:asgi_factory``, configured by environment."""
    _configure_posthog_module()
    app = FastAPI()
    app.add_middleware(
        CORSMiddleware,
        allow_origins=_origins(),
        allow_methods=["GET", "POST"],
        allow_headers=ALLOWED_HEADERS,
        allow_credentials=True,
    )

    def scope_user(scope: dict[str, Any]) -> str | None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        session = cookie_parser(headers.get("cookie", "")).get(SESSION_COOKIE)
        return user_of(headers.get("authorization", ""), session)

    @app.get("/api/hello")
    def hello(request: Request) -> dict[str, bool]:
        _capture(request.headers.get("user-agent", ""))
        return {"ok": True}

    @app.post("/api/login")
    async def login(request: Request, response: Response) -> dict[str, str]:
        answer = _signed_in(str((await request.json())["name"]))
        response.set_cookie(SESSION_COOKIE, answer["token"], httponly=True, samesite="lax")
        return answer

    @app.post("/api/logout")
    def logout(response: Response) -> dict[str, None]:
        _signed_out()
        response.delete_cookie(SESSION_COOKIE)
        return {"user": None}

    @app.get("/whoami")
    def whoami() -> dict[str, bool]:
        return {"ok": True}

    if _ours():
        from posthog_identity.integrations.fastapi import install

        install(app, user_id=scope_user)
    else:
        from posthog.integrations.asgi import PosthogASGIMiddleware

        app.add_middleware(PosthogASGIMiddleware)
    return app


# ---------------------------------------------------------------------------
# Flask, for gunicorn


def wsgi_factory() -> Any:
    """For gunicorn: ``'tests.sites.spa:wsgi_factory()'``, configured by environment."""
    from flask import Flask, jsonify, request
    from flask.typing import ResponseReturnValue
    from flask_cors import CORS

    _configure_posthog_module()
    app = Flask(__name__)
    CORS(
        app,
        origins=_origins(),
        methods=["GET", "POST"],
        allow_headers=ALLOWED_HEADERS,
        supports_credentials=True,
    )

    def request_user() -> str | None:
        return user_of(
            request.headers.get("Authorization", ""), request.cookies.get(SESSION_COOKIE)
        )

    @app.get("/api/hello")
    def hello() -> ResponseReturnValue:
        _capture(request.headers.get("User-Agent", ""))
        return {"ok": True}

    @app.post("/api/login")
    def login() -> ResponseReturnValue:
        answer = _signed_in(str(request.get_json()["name"]))
        response = jsonify(answer)
        response.set_cookie(SESSION_COOKIE, answer["token"], httponly=True, samesite="Lax")
        return response

    @app.post("/api/logout")
    def logout() -> ResponseReturnValue:
        _signed_out()
        response = jsonify({"user": None})
        response.delete_cookie(SESSION_COOKIE)
        return response

    @app.get("/whoami")
    def whoami() -> ResponseReturnValue:
        return {"ok": True}

    if _ours():
        from posthog_identity.integrations.flask import init_app

        init_app(app, user_id=request_user)
    else:
        from posthog.integrations.flask import PosthogFlaskIntegration

        PosthogFlaskIntegration(app)
    return app
