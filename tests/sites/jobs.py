"""A web app that enqueues a Celery task during a request, and the Celery app its worker runs.

`/enqueue?order=X` (Flask under gunicorn: `flask_wsgi()`; Django under
uvicorn: `django_asgi`, whose sync view runs in a worker thread; a plain ASGI
app under uvicorn: `plain_asgi`) enqueues `jobs.record(X)`; the task captures
`JOB_DONE` with posthog's module-level `capture` (property `order`: X). `/ok`
answers 200. The worker is ``celery -A tests.sites.jobs worker``.

Both processes are configured by environment variables only, as a newcomer's
would be, and call `posthog_identity.integrations.celery.instrument()` at
import. The broker is kombu's filesystem transport in the folder `JOBS_BROKER`
names: a real broker that two processes share, with nothing to install.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import posthog
from celery import Celery
from django.http import HttpRequest, HttpResponse
from django.urls import path

from posthog_identity.integrations.celery import instrument
from tests.sites.basic import serve_lifespan

JOB_DONE = "Job Done"
#: The folder the web process and the worker exchange messages through.
BROKER_FOLDER = "JOBS_BROKER"

_folder = Path(os.environ.get(BROKER_FOLDER, "."))
celery = Celery("jobs")
celery.conf.update(
    broker_url="filesystem://",
    broker_transport_options={
        "data_folder_in": str(_folder),
        "data_folder_out": str(_folder),
        "control_folder": str(_folder / "control"),
        "store_processed": False,
        "polling_interval": 0.1,
    },
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_enable_remote_control=False,
)


@celery.task(name="jobs.record")
def record(order: str) -> None:
    posthog.capture(JOB_DONE, properties={"order": order})


# Lifecycle events ("celery task started"...) are posthog's too; the tests
# look at the task's own capture only.
integration = instrument(capture_task_lifecycle_events=False)


def flask_wsgi() -> Any:
    from flask import Flask, request

    from posthog_identity.integrations.flask import init_app

    app = Flask(__name__)

    @app.get("/enqueue")
    def enqueue() -> str:
        record.delay(request.args["order"])
        return "queued"

    @app.get("/ok")
    def ok() -> str:
        return "ok"

    init_app(app)
    return app


def django_enqueue(request: HttpRequest) -> HttpResponse:
    record.delay(request.GET["order"])
    return HttpResponse("queued")


def django_ok(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


urlpatterns = [path("enqueue", django_enqueue), path("ok", django_ok)]


def django_asgi() -> Any:
    import django
    from django.conf import settings
    from django.core.asgi import get_asgi_application

    from posthog_identity.asgi import IdentityMiddleware

    settings.configure(
        DEBUG=False,
        SECRET_KEY="the-jobs-site-django-key",
        ALLOWED_HOSTS=["127.0.0.1"],
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes"],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "posthog_identity.integrations.django.IdentityMiddleware",
        ],
        ROOT_URLCONF=__name__,
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    )
    django.setup()
    return IdentityMiddleware(get_asgi_application())


def plain_asgi() -> Any:
    from posthog_identity.asgi import IdentityMiddleware

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["path"] == "/enqueue":
            order = parse_qs(scope["query_string"].decode())["order"][0]
            record.delay(order)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return IdentityMiddleware(app)
