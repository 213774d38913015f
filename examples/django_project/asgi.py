"""ASGI entry point: ``python -m uvicorn examples.django_project.asgi:application``."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

from posthog_identity.asgi import IdentityMiddleware

from .database import migrate

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_project.settings")

django_application = get_asgi_application()
migrate()

# Around the whole Django app: the identity cookie, the login link, the snippet.
# Its posthog client, built from POSTHOG_API_KEY and POSTHOG_HOST, becomes
# posthog's default client: the views' posthog.capture() calls and the login
# links share one queue.
application = IdentityMiddleware(django_application)
