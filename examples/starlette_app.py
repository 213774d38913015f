"""A small Starlette site wired with posthog-identity.

Run it from the repository root:

    POSTHOG_IDENTITY_SECRET="$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')" \
    POSTHOG_API_KEY=phc_... \
    uvicorn examples.starlette_app:app

(or ``hypercorn examples.starlette_app:app``). Without POSTHOG_API_KEY identity
is still resolved, but nothing is sent and no snippet is injected;
``python -m posthog_identity sink`` gives you a local PostHog to point
POSTHOG_HOST at. Log in with any name: the session only remembers the name.

Here ``IdentityMiddleware`` runs *inside* the authentication middleware (it is
listed after it), so ``scope["user"]`` is known when a request starts. The
endpoints call ``request_identity(request)`` anyway: it gives them the
identity, and keeps their captures right if the order is ever swapped.
"""

from __future__ import annotations

import html
import os
import secrets
from urllib.parse import parse_qs

import posthog
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.routing import Route

from posthog_identity import Settings, forget_user, identify_user
from posthog_identity.asgi import IdentityMiddleware
from posthog_identity.integrations.starlette import request_identity

# The session's own secret. A random one logs everybody out on restart and
# breaks with several workers: set SESSION_SECRET in production.
SESSION_SECRET = os.environ.get("SESSION_SECRET") or secrets.token_hex(32)


class SessionBackend(AuthenticationBackend):
    """Whoever logged in: the name kept in the session."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        name = conn.session.get("user")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


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


def render(request: Request, title: str, content: str) -> HTMLResponse:
    if request.user.is_authenticated:
        name = html.escape(request.user.display_name)
        nav = f'Signed in as <b>{name}</b> · <a href="/logout">Log out</a>'
    else:
        nav = "Not signed in"
    return HTMLResponse(PAGE.format(title=title, nav=nav, content=content))


def home(request: Request) -> HTMLResponse:
    # A sync endpoint: Starlette runs it in a thread pool, which is fine.
    request_identity(request)
    # No distinct_id: the event carries this request's identity.
    posthog.capture("page viewed", properties={"path": request.url.path})
    content = "" if request.user.is_authenticated else LOGIN_FORM
    return render(request, "Home", content + '<p><a href="/whoami">Who am I?</a></p>')


async def login(request: Request) -> RedirectResponse:
    # A urlencoded form, parsed without python-multipart.
    form = parse_qs((await request.body()).decode())
    name = form.get("user", [""])[0].strip()[:64]
    if name:
        request.session["user"] = name
        # request.user is still anonymous in this request: tell the middleware
        # now, so the link and the new cookie ride on this very response.
        identify_user(name)
    return RedirectResponse("/", status_code=303)


async def logout(request: Request) -> RedirectResponse:
    request.session.clear()
    forget_user()  # a fresh anonymous id, on this response
    return RedirectResponse("/", status_code=303)


async def whoami(request: Request) -> JSONResponse:
    identity = request_identity(request)
    if identity is None:  # the middleware is not installed or skips this path
        return JSONResponse({"distinct_id": None})
    return JSONResponse(
        {
            "distinct_id": identity.distinct_id,
            "anonymous_id": identity.anonymous_id,
            "user_id": identity.user_id,
            "is_identified": identity.is_identified,
        }
    )


app = Starlette(
    routes=[
        Route("/", home),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout),
        Route("/whoami", whoami),
    ],
    # Outermost first: IdentityMiddleware comes after authentication, inside it.
    # Starlette builds middleware on its first call; Settings.from_env() here
    # reads the settings at import, so a bad configuration stops the server
    # before it serves. The middleware's posthog client becomes posthog's
    # default client: the posthog.capture() calls above go through it.
    middleware=[
        Middleware(SessionMiddleware, secret_key=SESSION_SECRET),
        Middleware(AuthenticationMiddleware, backend=SessionBackend()),
        Middleware(IdentityMiddleware, Settings.from_env()),
    ],
)
