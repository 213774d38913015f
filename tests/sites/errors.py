"""Apps whose `/boom` raises, for the error tracking tests under real servers.

The same three routes in each: `/boom` raises `Boom` (the framework answers
500), `/marker?id=X` captures `MARKER` (property `marker`: X) with posthog's
module-level `capture`, `/ok` answers 200 (the servers' readiness check). Configured by environment
variables only: the middleware builds posthog's default client from them.

- `django_wsgi()` / `django_asgi()`: a Django project (no database needed)
  with our Django middleware, wrapped in our WSGI/ASGI middleware; with
  `POSTHOG_MIDDLEWARE_INSIDE=1`, posthog's own Django middleware sits after ours.
- `flask_wsgi()`: a Flask app with `init_app`.
- `plain_asgi()`: a bare ASGI app in our ASGI middleware.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs

import posthog
from django.http import HttpRequest, HttpResponse
from django.urls import path

from tests.sites.basic import serve_lifespan

MARKER = "Marker After The Error"
#: Set to 1: posthog's own Django middleware runs inside ours.
POSTHOG_MIDDLEWARE_INSIDE = "POSTHOG_MIDDLEWARE_INSIDE"


class Boom(Exception):
    """The app's own unhandled error."""


# -- Django -------------------------------------------------------------------


def boom(request: HttpRequest) -> HttpResponse:
    raise Boom("the database is down")


def marker(request: HttpRequest) -> HttpResponse:
    posthog.capture(MARKER, properties={"marker": request.GET["id"]})
    return HttpResponse("marked")


def ok(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


urlpatterns = [path("boom", boom), path("marker", marker), path("ok", ok)]


def _configure_django() -> None:
    import django
    from django.conf import settings

    if settings.configured:
        return
    middleware = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "posthog_identity.integrations.django.IdentityMiddleware",
    ]
    if os.environ.get(POSTHOG_MIDDLEWARE_INSIDE) == "1":
        middleware.append("posthog.integrations.django.PosthogContextMiddleware")
    settings.configure(
        DEBUG=False,
        SECRET_KEY="the-errors-site-django-key",
        ALLOWED_HOSTS=["127.0.0.1"],
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes"],
        MIDDLEWARE=middleware,
        ROOT_URLCONF=__name__,
        # Anonymous visitors only: sessions in a cookie, no database touched.
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    )
    django.setup()


def django_wsgi() -> Any:
    _configure_django()
    from django.core.wsgi import get_wsgi_application

    from posthog_identity.wsgi import IdentityMiddleware

    return IdentityMiddleware(get_wsgi_application())


def django_asgi() -> Any:
    _configure_django()
    from django.core.asgi import get_asgi_application

    from posthog_identity.asgi import IdentityMiddleware

    return IdentityMiddleware(get_asgi_application())


# -- Flask --------------------------------------------------------------------


def flask_wsgi() -> Any:
    from flask import Flask, request

    from posthog_identity.integrations.flask import init_app

    app = Flask(__name__)

    @app.get("/boom")
    def flask_boom() -> str:
        raise Boom("the database is down")

    @app.get("/marker")
    def flask_marker() -> str:
        posthog.capture(MARKER, properties={"marker": request.args["id"]})
        return "marked"

    @app.get("/ok")
    def flask_ok() -> str:
        return "ok"

    init_app(app)
    return app


# -- a plain ASGI app -----------------------------------------------------------


def plain_asgi() -> Any:
    from posthog_identity.asgi import IdentityMiddleware

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["path"] == "/boom":
            raise Boom("the database is down")
        if scope["path"] == "/marker":
            query = parse_qs(scope["query_string"].decode())
            posthog.capture(MARKER, properties={"marker": query["id"][0]})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return IdentityMiddleware(app)
