"""A small FastAPI site wired with posthog-identity.

Run it from the repository root:

    POSTHOG_IDENTITY_SECRET="$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')" \
    POSTHOG_API_KEY=phc_... \
    uvicorn examples.fastapi_app:app

(or ``hypercorn examples.fastapi_app:app``). Without POSTHOG_API_KEY identity
is still resolved, but nothing is sent and no snippet is injected;
``python -m posthog_identity sink`` gives you a local PostHog to point
POSTHOG_HOST at. Log in with any name: the session only remembers the name.

``install(app)`` adds ``IdentityMiddleware`` last, so it runs *outside* the authentication
middleware: when a request starts, nobody has been authenticated yet. The
``CurrentIdentity`` dependency reports the authenticated user to it, so the
server-side capture in ``home`` carries the user id anyway.
"""

from __future__ import annotations

import html
import os
import secrets
from typing import Any
from urllib.parse import parse_qs

import posthog
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection

from posthog_identity import forget_user, identify_user
from posthog_identity.integrations.fastapi import CurrentIdentity, install

# The session's own secret. A random one logs everybody out on restart and
# breaks with several workers: set SESSION_SECRET in production.
SESSION_SECRET = os.environ.get("SESSION_SECRET") or secrets.token_hex(32)


class SessionBackend(AuthenticationBackend):
    """Whoever logged in: the name kept in the session."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        name = conn.session.get("user")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


app = FastAPI()
app.add_middleware(AuthenticationMiddleware, backend=SessionBackend())
app.add_middleware(SessionMiddleware, secret_key=SESSION_SECRET)
# Last: the outermost middleware, around the session and authentication. It
# reads the settings now, so a bad configuration stops the server before it
# serves. Its posthog client becomes posthog's default client: the
# posthog.capture() calls below go through it, one queue flushed at shutdown.
install(app)

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title} · posthog-identity</title>
</head>
<body>
  <nav>{nav}</nav>
  <h1>{title}</h1>
  {content}
</body>
</html>
"""

LOGIN_FORM = """<form method="post" action="/login">
  <label>Your name <input name="user" required maxlength="64" autofocus></label>
  <button>Log in</button>
</form>"""


def render(request: Request, title: str, content: str) -> str:
    if request.user.is_authenticated:
        name = html.escape(request.user.display_name)
        nav = f'Signed in as <b>{name}</b> · <a href="/logout">Log out</a>'
    else:
        nav = "Not signed in"
    return PAGE.format(title=title, nav=nav, content=content)


@app.get("/", response_class=HTMLResponse)
def home(request: Request, identity: CurrentIdentity) -> str:
    # Declaring `identity` reports the authenticated user to the middleware,
    # so this capture carries the user id; no distinct_id needed. A sync
    # endpoint: FastAPI runs it in a thread pool, which is fine.
    posthog.capture("page viewed", properties={"path": request.url.path})
    content = "" if request.user.is_authenticated else LOGIN_FORM
    return render(request, "Home", content + '<p><a href="/whoami">Who am I?</a></p>')


@app.post("/login")
async def login(request: Request) -> RedirectResponse:
    # A urlencoded form, parsed without python-multipart.
    form = parse_qs((await request.body()).decode())
    name = form.get("user", [""])[0].strip()[:64]
    if name:
        request.session["user"] = name
        # Authentication ran before this view: tell the middleware now, so the
        # link and the new cookie ride on this very response.
        identify_user(name)
    return RedirectResponse("/", status_code=303)


@app.get("/logout")
async def logout(request: Request) -> RedirectResponse:
    request.session.clear()
    forget_user()  # a fresh anonymous id, on this response
    return RedirectResponse("/", status_code=303)


@app.get("/whoami")
async def whoami(identity: CurrentIdentity) -> dict[str, Any]:
    if identity is None:  # the middleware is not installed or skips this path
        return {"distinct_id": None}
    return {
        "distinct_id": identity.distinct_id,
        "anonymous_id": identity.anonymous_id,
        "user_id": identity.user_id,
        "is_identified": identity.is_identified,
    }
