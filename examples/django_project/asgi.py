"""ASGI entry point: ``python -m uvicorn examples.django_project.asgi:application``."""

from __future__ import annotations

import os

import posthog
from django.core.asgi import get_asgi_application

from posthog_identity.asgi import IdentityMiddleware

from .database import migrate

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_project.settings")

django_application = get_asgi_application()
migrate()

# Around the whole Django app: the identity cookie, the login link, the snippet.
# It shares posthog's module-level client (settings.py configures it), so one
# queue sends the views' captures and the login links.
application = IdentityMiddleware(
    django_application, client=posthog.setup() if posthog.api_key else None
)
