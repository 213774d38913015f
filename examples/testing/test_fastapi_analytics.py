"""Testing a FastAPI app's analytics with the `posthog_sink` fixture.

Needs only `pip install posthog-identity pytest fastapi httpx` (httpx for
FastAPI's `TestClient`): installing posthog-identity registers the pytest
plugin. Run with `pytest`.
"""

from __future__ import annotations

import os

import posthog
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from posthog_identity import identify_user
from posthog_identity.asgi import IdentityMiddleware
from posthog_identity.integrations.fastapi import CurrentIdentity


def create_app() -> FastAPI:
    """The app under test, built by a factory so it reads POSTHOG_* when a test builds it."""
    posthog.project_api_key = os.environ.get("POSTHOG_API_KEY")
    posthog.host = os.environ.get("POSTHOG_HOST")
    app = FastAPI()
    # Who is logged in: a `user` cookie, for the example; yours is your auth.
    app.add_middleware(
        IdentityMiddleware,
        client=posthog.setup(),
        user_id=lambda scope: _cookie(scope, "user"),
    )

    @app.get("/")
    def home(identity: CurrentIdentity) -> dict[str, str]:
        posthog.capture("home viewed")  # no distinct_id: it is this request's
        return {"hello": "visitor"}

    @app.post("/login")
    def login(identity: CurrentIdentity) -> dict[str, str]:
        identify_user("grace")
        return {"hello": "grace"}

    @app.post("/orders")
    def order(identity: CurrentIdentity) -> dict[str, str]:
        posthog.capture("order placed", properties={"total": 42})
        return {"order": "placed"}

    return app


def _cookie(scope: dict, name: str) -> str | None:
    for key, value in scope["headers"]:
        if key == b"cookie":
            for part in value.decode("latin-1").split(";"):
                found, _, content = part.strip().partition("=")
                if found == name:
                    return content
    return None


@pytest.fixture
def app(posthog_sink: object) -> FastAPI:
    # posthog_sink first: it points POSTHOG_HOST at the local sink (and sets a
    # test POSTHOG_IDENTITY_SECRET and POSTHOG_API_KEY when you have none).
    return create_app()


def test_login_links_the_anonymous_visitor_to_the_user(app: FastAPI, posthog_sink) -> None:
    with TestClient(app) as browser:
        browser.get("/")
        browser.post("/login")

    [visit] = posthog_sink.events("home viewed")  # leaving TestClient flushed the client
    link = posthog_sink.assert_login_link("grace")
    assert link.anonymous_id == visit["distinct_id"]


def test_an_order_is_captured_for_the_user(app: FastAPI, posthog_sink) -> None:
    with TestClient(app, cookies={"user": "grace"}) as browser:
        browser.post("/orders")

    event = posthog_sink.assert_captured("order placed", distinct_id="grace")
    assert event["properties"]["total"] == 42
