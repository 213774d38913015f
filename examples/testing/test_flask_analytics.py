"""Testing a Flask app's analytics with the `posthog_sink` fixture.

Needs only `pip install posthog-identity pytest flask`: installing
posthog-identity registers the pytest plugin. Run with `pytest`.
"""

from __future__ import annotations

import os

import posthog
import pytest
from flask import Flask, session

from posthog_identity import identify_user
from posthog_identity.integrations.flask import init_app


def create_app() -> Flask:
    """The app under test, built by a factory so it reads POSTHOG_* when a test builds it."""
    posthog.project_api_key = os.environ.get("POSTHOG_API_KEY")
    posthog.host = os.environ.get("POSTHOG_HOST")
    app = Flask(__name__)
    app.secret_key = "flask-session-secret"
    init_app(app, user_id=lambda: session.get("user"), client=posthog.setup())

    @app.get("/")
    def home() -> str:
        posthog.capture("home viewed")  # no distinct_id: it is this request's
        return "<html><head></head><body>Home</body></html>"

    @app.post("/login")
    def login() -> str:
        session["user"] = "ada"
        identify_user("ada")
        return "welcome"

    @app.post("/checkout")
    def checkout() -> str:
        flags = posthog.evaluate_flags()  # for this request's distinct id
        new_checkout = flags.is_enabled("new-checkout")
        posthog.capture("checkout completed", properties={"new_checkout": new_checkout})
        return "thanks"

    return app


@pytest.fixture
def app(posthog_sink: object) -> Flask:
    # posthog_sink first: it points POSTHOG_HOST at the local sink (and sets a
    # test POSTHOG_IDENTITY_SECRET and POSTHOG_API_KEY when you have none).
    return create_app()


def test_login_links_the_anonymous_visitor_to_the_user(app: Flask, posthog_sink) -> None:
    browser = app.test_client()
    browser.get("/")
    browser.post("/login")

    posthog_sink.flush()  # the posthog client sends from a background thread
    [visit] = posthog_sink.events("home viewed")
    link = posthog_sink.assert_login_link("ada")
    assert link.anonymous_id == visit["distinct_id"]


def test_checkout_is_captured_for_the_user_with_the_flag_it_saw(app: Flask, posthog_sink) -> None:
    posthog_sink.serve_flags({"new-checkout": True})
    browser = app.test_client()
    browser.post("/login")
    browser.post("/checkout")

    event = posthog_sink.assert_captured("checkout completed", distinct_id="ada")
    assert event["properties"]["new_checkout"] is True
