"""Settings of a minimal Django project wired for posthog_identity.

Run it from the repository root (one of):

    POSTHOG_IDENTITY_SECRET=change-me-to-32-random-characters \
        python -m gunicorn examples.django_project.wsgi:application
    POSTHOG_IDENTITY_SECRET=change-me-to-32-random-characters \
        python -m uvicorn examples.django_project.asgi:application

Add POSTHOG_API_KEY (and POSTHOG_HOST) to send events and get the browser
snippet; `python -m posthog_identity sink` runs a local PostHog to point them
at. The SQLite database is DJANGO_EXAMPLE_DB, default `db.sqlite3` next to this
file; it is created and migrated when the server starts (see database.py).
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

# An example: never deploy with this key or with DEBUG on.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-example-insecure-key")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # After AuthenticationMiddleware: it reports request.user. The cookie, the
    # login link and the snippet belong to the middleware in wsgi.py/asgi.py.
    "posthog_identity.integrations.django.IdentityMiddleware",
]

ROOT_URLCONF = "examples.django_project.urls"
WSGI_APPLICATION = "examples.django_project.wsgi.application"
ASGI_APPLICATION = "examples.django_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_EXAMPLE_DB") or BASE_DIR / "db.sqlite3",
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

USE_TZ = True
