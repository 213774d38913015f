"""WSGI entry point: ``python -m gunicorn examples.django_project.wsgi:application``."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

from posthog_identity.wsgi import IdentityMiddleware

from .database import migrate

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_project.settings")

django_application = get_wsgi_application()
migrate()

# Around the whole Django app: the identity cookie, the login link, the snippet.
# Its posthog client, built from POSTHOG_API_KEY and POSTHOG_HOST, becomes
# posthog's default client: the views' posthog.capture() calls and the login
# links share one queue.
application = IdentityMiddleware(django_application)
