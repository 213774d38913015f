"""A plain WSGI site (Werkzeug's request and response, no framework) wired with posthog-identity.

Run it from the repository root:

    POSTHOG_IDENTITY_SECRET="$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')" \
    POSTHOG_API_KEY=phc_... \
    gunicorn examples.wsgi_app:application

(or ``python -m waitress --listen=127.0.0.1:8000 examples.wsgi_app:application``).
Without POSTHOG_API_KEY identity is still resolved, but nothing is sent and no
snippet is injected; ``python -m posthog_identity sink`` gives you a local
PostHog to point POSTHOG_HOST at. Log in with any name: the signed session
cookie only remembers the name.
"""

from __future__ import annotations

import html
import json
import os
import secrets
from typing import TYPE_CHECKING

import posthog
from itsdangerous import BadSignature, URLSafeSerializer
from werkzeug.http import parse_cookie
from werkzeug.wrappers import Request, Response

from posthog_identity import current_identity, forget_user, identify_user
from posthog_identity.wsgi import IdentityMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

# The session's own secret. A random one logs everybody out on restart and
# breaks with several workers: set SESSION_SECRET in production.
SESSION_SECRET = os.environ.get("SESSION_SECRET") or secrets.token_hex(32)
SESSION_COOKIE = "session"
sessions = URLSafeSerializer(SESSION_SECRET, salt="example-session")


def session_user(cookie_header: str) -> str | None:
    """The name in the signed session cookie, or None."""
    value = parse_cookie(cookie_header).get(SESSION_COOKIE)
    if value is None:
        return None
    try:
        name = sessions.loads(value)
    except BadSignature:
        return None
    return name if isinstance(name, str) and name else None


def user_id(environ: WSGIEnvironment) -> str | None:
    """For the middleware: who is logged in (None: nobody)."""
    return session_user(environ.get("HTTP_COOKIE", ""))


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


def home(request: Request, user: str | None) -> Response:
    # No distinct_id: the event carries this request's identity.
    posthog.capture("page viewed", properties={"path": request.path})
    if user is None:
        nav, content = "Not signed in", LOGIN_FORM
    else:
        name = html.escape(user)
        nav, content = f'Signed in as <b>{name}</b> · <a href="/logout">Log out</a>', ""
    content += '<p><a href="/whoami">Who am I?</a></p>'
    page = PAGE.format(title="Home", nav=nav, content=content)
    return Response(page, content_type="text/html; charset=utf-8")


def login(request: Request) -> Response:
    response = redirect("/")
    name = request.form.get("user", "").strip()[:64]
    if name:
        response.set_cookie(SESSION_COOKIE, sessions.dumps(name), httponly=True, samesite="Lax")
        # The callback reads the request's cookie, which has no session yet:
        # tell the middleware now, so the link and its cookie ride on this response.
        identify_user(name)
    return response


def logout(request: Request) -> Response:
    response = redirect("/")
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="Lax")
    forget_user()  # a fresh anonymous id, on this response
    return response


def whoami(request: Request) -> Response:
    identity = current_identity()
    body: dict[str, object] = {"distinct_id": None}
    if identity is not None:
        body = {
            "distinct_id": identity.distinct_id,
            "anonymous_id": identity.anonymous_id,
            "user_id": identity.user_id,
            "is_identified": identity.is_identified,
        }
    return Response(json.dumps(body), content_type="application/json")


def redirect(location: str) -> Response:
    return Response(status=303, headers={"Location": location})


@Request.application
def app(request: Request) -> Response:
    if request.path == "/" and request.method in ("GET", "HEAD"):
        return home(request, user_id(request.environ))
    if request.path == "/login" and request.method == "POST":
        return login(request)
    if request.path == "/logout":
        return logout(request)
    if request.path == "/whoami":
        return whoami(request)
    return Response("not found", status=404, content_type="text/plain")


# Its posthog client, built from POSTHOG_API_KEY and POSTHOG_HOST, becomes
# posthog's default client: the posthog.capture() calls above go through it.
application = IdentityMiddleware(app, user_id=user_id)
