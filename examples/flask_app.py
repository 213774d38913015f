"""A small Flask + Flask-Login site wired with posthog-identity.

Run it from the repository root:

    POSTHOG_IDENTITY_SECRET="$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')" \
    POSTHOG_API_KEY=phc_... \
    gunicorn examples.flask_app:app

(or ``python -m waitress --listen=127.0.0.1:8000 examples.flask_app:app``).
Without POSTHOG_API_KEY identity is still resolved, but nothing is sent and no
snippet is injected; ``python -m posthog_identity sink`` gives you a local
PostHog to point POSTHOG_HOST at. Log in with any name: users live in memory.
"""

from __future__ import annotations

import os
import secrets

import posthog
from flask import Flask, redirect, render_template_string, request, url_for
from flask_login import (
    LoginManager,
    UserMixin,
    current_user,
    login_required,
    login_user,
    logout_user,
)
from markupsafe import Markup
from werkzeug.wrappers import Response

from posthog_identity.integrations.flask import init_app

# posthog's module configured by the app, as posthog's docs show: the
# middleware then uses this client (posthog.setup()) and builds none. Without
# these two lines it would build one from the same variables and make it
# posthog's default client.
posthog.api_key = os.environ.get("POSTHOG_API_KEY") or os.environ.get("POSTHOG_PROJECT_API_KEY")
posthog.host = os.environ.get("POSTHOG_HOST") or None

app = Flask(__name__)
# Flask's own secret, for its session. A random one logs everybody out on restart
# and breaks with several workers: set FLASK_SECRET_KEY in production.
app.secret_key = os.environ.get("FLASK_SECRET_KEY") or secrets.token_hex(32)

login_manager = LoginManager(app)
login_manager.login_view = "login"


class User(UserMixin):
    """Flask-Login's README style: the user's name is its id."""

    def __init__(self, name: str) -> None:
        self.id = name


USERS: dict[str, User] = {}


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    return USERS.get(user_id)


# After the LoginManager or before it: the current user is read per request.
init_app(app)

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{{ title }} · posthog-identity</title>
</head>
<body>
  <nav>
    {% if current_user.is_authenticated %}
      Signed in as <b>{{ current_user.id }}</b> · <a href="{{ url_for('logout') }}">Log out</a>
    {% else %}
      <a href="{{ url_for('login') }}">Log in</a>
    {% endif %}
  </nav>
  <h1>{{ title }}</h1>
  {{ content }}
</body>
</html>
"""

LOGIN_FORM = Markup("""
<form method="post">
  <label>Your name <input name="name" required maxlength="64" autofocus></label>
  <button>Log in</button>
</form>
""")


@app.get("/")
def home() -> str:
    # No distinct_id: the event carries this request's identity.
    posthog.capture("home viewed", properties={"signed_in": current_user.is_authenticated})
    return render_template_string(PAGE, title="Home", content="Welcome.")


@app.get("/account")
@login_required
def account() -> str:
    return render_template_string(PAGE, title="Your account", content="Nothing to see yet.")


@app.route("/login", methods=["GET", "POST"])
def login() -> str | Response:
    name = request.form.get("name", "").strip()[:64]
    if request.method == "POST" and name:
        # The middleware links the visitor's anonymous id into this user once.
        login_user(USERS.setdefault(name, User(name)))
        return redirect(url_for("home"))
    return render_template_string(PAGE, title="Log in", content=LOGIN_FORM)


@app.get("/logout")
def logout() -> Response:
    # The middleware gives the browser a fresh anonymous id.
    logout_user()
    return redirect(url_for("home"))
