"""Flask glue: `posthog_identity.integrations.flask.init_app`, as specifications.

Drives small Flask apps in-process with Flask's test client, through the real
middleware, with posthog's real client posting to a `Sink`. Responses are
fetched buffered, so the test client closes each body as a server must
(PEP 3333); an unclosed body would leave the request's scope open. The example
app under real servers is in `tests/servers/test_flask_example.py`.
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import flask
import posthog
import pytest
from flask import Flask, request, stream_with_context
from flask.testing import FlaskClient
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from posthog.contexts import get_context_distinct_id
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.test import EnvironBuilder, TestResponse

from posthog_identity import NOTHING, ConfigurationError, current_identity, identify_user
from posthog_identity.flags import FlagContext
from posthog_identity.integrations.flask import init_app
from posthog_identity.settings import Settings
from posthog_identity.signing import CookieCodec, CookieState
from posthog_identity.testing import Sink
from posthog_identity.wsgi import IdentityMiddleware
from tests.helpers.drivers import call_wsgi
from tests.helpers.project import API_KEY, SECRET
from tests.helpers.wire import ALIAS, COOKIE, parse_set_cookie, read_cookie
from tests.sites.flags import bootstrap

if TYPE_CHECKING:
    from posthog_identity.settings import Settings

FLASK_SESSION_KEY = "the-flask-session-key-which-is-not-the-identity-secret"

# ---------------------------------------------------------------------------
# In-process: small apps and Flask's test client


class Member(UserMixin):
    """A plain Flask-Login user: `id` is the database id, `get_id()` its str."""

    def __init__(self, id: int) -> None:
        self.id = id


class SecurityUser(UserMixin):
    """Flask-Security-Too's shape: `get_id()` is the rotatable `fs_uniquifier`."""

    def __init__(self, id: int, fs_uniquifier: str) -> None:
        self.id = id
        self.fs_uniquifier = fs_uniquifier

    def get_id(self) -> str:
        return self.fs_uniquifier


class KeyUser(UserMixin):
    """No `id` attribute: `get_id()` is all Flask-Login knows."""

    def __init__(self, key: str) -> None:
        self.key = key

    def get_id(self) -> str:
        return self.key


# Keyed by what Flask-Login keeps in the session: get_id().
USERS: dict[str, UserMixin] = {
    user.get_id(): user for user in (Member(7), SecurityUser(42, "fsu-rotatable"), KeyUser("k-9"))
}


def whoami() -> dict[str, Any]:
    identity = current_identity()
    assert identity is not None, "the view runs outside the middleware"
    return {
        "user": identity.user_id,
        "anonymous": identity.anonymous_id,
        "signed_in": identity.signed_in,
        "context": get_context_distinct_id(),
    }


def site(*, flask_login: bool = True) -> Flask:
    """A Flask app with views that report what the identity is while they run."""
    app = Flask(__name__)
    app.secret_key = FLASK_SESSION_KEY
    if flask_login:
        LoginManager(app).user_loader(USERS.get)

    @app.get("/whoami")
    def show() -> dict[str, Any]:
        return whoami()

    @app.get("/login/<key>")
    def login(key: str) -> dict[str, Any]:
        login_user(USERS[key])
        return whoami()

    @app.get("/logout")
    def logout() -> dict[str, Any]:
        logout_user()
        return whoami()

    @app.get("/identify/<user>")
    def identify(user: str) -> dict[str, Any]:
        identify_user(user)
        return whoami()

    @app.get("/assets/<key>")
    def asset(key: str) -> str:
        if key == "login":
            login_user(USERS["7"])
        if key == "logout":
            logout_user()
        return "asset"

    return app


def fetch(http: FlaskClient, path: str, **options: Any) -> TestResponse:
    """GET through the test client, the body read and closed as a server does."""
    return http.get(path, buffered=True, **options)


def replace_excludes(settings: Settings, *paths: str) -> Settings:
    return replace(settings, exclude_paths=paths)


def identity_of(http: FlaskClient) -> CookieState:
    cookie = http.get_cookie(COOKIE)
    assert cookie is not None, "no identity cookie"
    return read_cookie(cookie.value)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/", 200, id="view"),
        pytest.param("/stream", 200, id="streamed-body"),
        pytest.param("/missing", 404, id="not-found"),
        pytest.param("/boom", 500, id="view-raised"),
    ],
)
def test_flask_calls_start_response_inside_its_request_context(path: str, status: int) -> None:
    # The middleware relies on it to read the user again when the response starts.
    app = Flask(__name__)
    app.add_url_rule("/", "page", lambda: "ok")
    app.add_url_rule("/stream", "stream", lambda: app.response_class(iter([b"a", b"b"])))

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    seen: list[tuple[str, bool]] = []

    def start_response(code: str, headers: Any, exc_info: Any = None) -> Any:
        seen.append((code, flask.has_request_context()))
        return lambda data: None

    body = app.wsgi_app(EnvironBuilder(path).get_environ(), start_response)
    try:
        b"".join(body)
    finally:
        body.close()  # type: ignore[attr-defined]

    assert [(int(code.split()[0]), inside) for code, inside in seen] == [(status, True)]


def test_init_app_wraps_wsgi_app_and_keeps_the_middleware_on_extensions(
    settings: Settings,
) -> None:
    app = site()
    flask_wsgi_app = app.wsgi_app

    middleware = init_app(app, settings=settings)

    assert isinstance(middleware, IdentityMiddleware)
    assert app.wsgi_app is middleware
    assert app.extensions["posthog_identity"] is middleware
    assert middleware.app == flask_wsgi_app


def test_init_app_twice_on_one_app_is_an_error(settings: Settings) -> None:
    app = site()
    init_app(app, settings=settings)

    with pytest.raises(RuntimeError, match="already"):
        init_app(app, settings=settings)


def test_outside_a_flask_request_context_the_middleware_callback_reports_nothing(
    settings: Settings,
) -> None:
    calls: list[str] = []
    middleware = init_app(site(), settings=settings, user_id=lambda: calls.append("called"))
    assert middleware.user_id is not None

    assert middleware.user_id({"PATH_INFO": "/"}) is NOTHING
    assert calls == []


def test_views_see_the_flask_login_user_of_the_session(
    settings: Settings, client: posthog.Client
) -> None:
    app = site()
    init_app(app, settings=settings, client=client)
    http = app.test_client()
    fetch(http, "/login/7")

    seen = fetch(http, "/whoami").json

    assert seen is not None
    assert seen["user"] == "7"
    assert seen["context"] == "7"


def test_the_user_id_attribute_wins_over_a_rotatable_get_id(
    settings: Settings, client: posthog.Client
) -> None:
    app = site()
    init_app(app, settings=settings, client=client)
    http = app.test_client()
    fetch(http, "/login/fsu-rotatable")

    seen = fetch(http, "/whoami").json

    assert seen is not None
    assert seen["user"] == "42"


def test_a_user_without_an_id_attribute_reports_get_id(
    settings: Settings, client: posthog.Client
) -> None:
    app = site()
    init_app(app, settings=settings, client=client)
    http = app.test_client()
    fetch(http, "/login/k-9")

    seen = fetch(http, "/whoami").json

    assert seen is not None
    assert seen["user"] == "k-9"


def test_login_user_in_a_view_links_the_anonymous_id_in_that_response(
    settings: Settings, client: posthog.Client, sink: Sink
) -> None:
    app = site()
    init_app(app, settings=settings, client=client)
    http = app.test_client()
    fetch(http, "/whoami")
    anonymous = identity_of(http).anonymous_id

    fetch(http, "/login/7")

    after = identity_of(http)
    assert (after.anonymous_id, after.linked) == (anonymous, True)
    assert after.user_hash is not None
    [alias] = sink.wait_for(event=ALIAS)
    assert alias["distinct_id"] == "7"
    assert alias["properties"]["alias"] == anonymous


@pytest.mark.parametrize(
    ("key", "user"),
    [("7", "7"), ("fsu-rotatable", "42"), ("k-9", "k-9")],
    ids=["flask-login", "flask-security-too-shape", "get-id-only"],
)
def test_captures_after_login_user_in_the_login_view_carry_the_user(
    settings: Settings, client: posthog.Client, key: str, user: str
) -> None:
    app = site()
    init_app(app, settings=settings, client=client)
    http = app.test_client()

    seen = fetch(http, f"/login/{key}").json

    assert seen is not None
    assert seen["user"] == user
    assert seen["context"] == user


def test_logout_user_in_a_view_moves_to_a_new_anonymous_id_at_once(
    settings: Settings, client: posthog.Client
) -> None:
    app = site()
    init_app(app, settings=settings, client=client)
    http = app.test_client()
    fetch(http, "/login/7")
    before = identity_of(http)

    seen = fetch(http, "/logout").json

    after = identity_of(http)
    assert after.anonymous_id != before.anonymous_id
    assert after.user_hash is None
    assert seen is not None
    assert (seen["user"], seen["anonymous"]) == (None, after.anonymous_id)
    assert seen["context"] == after.anonymous_id


def test_a_visitor_whose_flask_session_ended_reports_nobody(
    settings: Settings, client: posthog.Client
) -> None:
    app = site()
    init_app(app, settings=settings, client=client)
    http = app.test_client()
    fetch(http, "/login/7")
    before = identity_of(http)
    http.delete_cookie(app.config["SESSION_COOKIE_NAME"])

    seen = fetch(http, "/whoami").json

    after = identity_of(http)
    assert after.anonymous_id != before.anonymous_id
    assert after.user_hash is None
    assert seen is not None
    assert seen["user"] is None


def test_a_user_id_callable_wins_over_flask_login(
    settings: Settings, client: posthog.Client
) -> None:
    app = site()
    init_app(app, settings=settings, client=client, user_id=lambda: request.headers["X-User"])
    http = app.test_client()
    fetch(http, "/login/7", headers={"X-User": "from-callable"})

    seen = fetch(http, "/whoami", headers={"X-User": "from-callable"}).json

    assert seen is not None
    assert seen["user"] == "from-callable"


def test_a_user_id_callable_that_raises_answers_200_and_reports_nothing(
    settings: Settings, client: posthog.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="posthog_identity")

    def user_id() -> object:
        if request.headers["X-User"] == "!":
            raise LookupError("the session store is down")
        return request.headers["X-User"]

    app = site()
    init_app(app, settings=settings, client=client, user_id=user_id)
    http = app.test_client()
    fetch(http, "/whoami", headers={"X-User": "ada"})
    remembered = identity_of(http)

    reply = fetch(http, "/whoami", headers={"X-User": "!"})

    assert reply.status_code == 200
    assert reply.headers.getlist("Set-Cookie") == []  # a logout would set a new id
    assert identity_of(http) == remembered
    assert reply.json is not None
    assert (reply.json["user"], reply.json["signed_in"]) == (None, True)
    assert caplog.text.count("the user_id callback raised LookupError") == 1


def test_an_app_without_flask_login_logs_how_to_report_users_once_and_stays_anonymous(
    settings: Settings, client: posthog.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="posthog_identity")
    app = site(flask_login=False)
    init_app(app, settings=settings, client=client)
    http = app.test_client()

    replies = [fetch(http, "/whoami").json for _ in range(2)]

    assert all(reply is not None and reply["user"] is None for reply in replies)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1
    assert "no user source" in infos[0]
    assert "identify_user()" in infos[0]


def test_without_flask_login_installed_the_info_line_comes_at_start_up(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="posthog_identity")
    monkeypatch.setitem(sys.modules, "flask_login", None)  # import flask_login fails
    app = site(flask_login=False)

    init_app(app, settings=settings)
    fetch(app.test_client(), "/whoami")

    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1
    assert "no user source" in infos[0].getMessage()


def test_without_a_user_source_identify_user_in_a_view_still_logs_in(
    settings: Settings, client: posthog.Client
) -> None:
    app = site(flask_login=False)
    init_app(app, settings=settings, client=client)
    http = app.test_client()
    fetch(http, "/identify/ada")

    seen = fetch(http, "/whoami").json

    assert identity_of(http).user_hash is not None
    assert seen is not None
    assert (seen["user"], seen["signed_in"]) == (None, True)  # nothing reported: it stands


def test_a_login_manager_set_up_after_init_app_is_picked_up(
    settings: Settings, client: posthog.Client
) -> None:
    app = site(flask_login=False)
    init_app(app, settings=settings, client=client)
    LoginManager(app).user_loader(USERS.get)
    http = app.test_client()
    fetch(http, "/login/7")

    seen = fetch(http, "/whoami").json

    assert seen is not None
    assert seen["user"] == "7"


def test_paths_the_middleware_passes_through_never_load_the_user(
    settings: Settings, client: posthog.Client
) -> None:
    loaded: list[str] = []

    def load(key: str) -> UserMixin | None:
        loaded.append(key)
        return USERS.get(key)

    app = site(flask_login=False)
    LoginManager(app).user_loader(load)
    init_app(app, settings=replace_excludes(settings, "/assets"), client=client)
    http = app.test_client()
    fetch(http, "/login/7")
    loaded.clear()

    reply = fetch(http, "/assets/app.css")

    assert reply.text == "asset"
    assert reply.headers.getlist("Set-Cookie") == []
    assert loaded == []


def test_login_and_logout_on_a_passed_through_path_change_no_identity(
    settings: Settings, client: posthog.Client
) -> None:
    app = site()
    init_app(app, settings=replace_excludes(settings, "/assets"), client=client)
    http = app.test_client()

    replies = [fetch(http, "/assets/login"), fetch(http, "/assets/logout")]

    assert [reply.status_code for reply in replies] == [200, 200]
    assert http.get_cookie(COOKIE) is None


def test_captures_in_a_stream_with_context_body_carry_the_user(
    settings: Settings, client: posthog.Client, sink: Sink
) -> None:
    app = site()

    @app.get("/stream")
    def stream() -> Any:
        @stream_with_context
        def chunks() -> Iterator[str]:
            yield "first "
            client.capture("Streamed", properties={"user": str(current_user.id)})
            yield json.dumps(whoami())

        return app.response_class(chunks())

    init_app(app, settings=settings, client=client)
    http = app.test_client()
    fetch(http, "/login/7")

    reply = fetch(http, "/stream")

    assert json.loads(reply.text.removeprefix("first "))["context"] == "7"
    [event] = sink.wait_for(event="Streamed")
    assert event["distinct_id"] == "7"
    assert event["properties"]["user"] == "7"


def consent_site(settings: Settings, client: posthog.Client) -> Flask:
    """Opt-in consent kept in the Flask session, read by init_app's consent callable."""
    app = Flask(__name__)
    app.secret_key = FLASK_SESSION_KEY

    @app.get("/agree")
    def agree() -> str:
        flask.session["analytics"] = True
        return "thanks"

    @app.get("/page")
    def page() -> dict[str, Any]:
        identity = current_identity()
        assert identity is not None
        return {"consented": identity.consented}

    init_app(
        app,
        settings=replace(settings, consent="opt-in"),
        client=client,
        consent=lambda: flask.session.get("analytics"),
    )
    return app


def test_a_consent_callable_reads_the_flask_session_inside_its_request_context(
    settings: Settings, client: posthog.Client
) -> None:
    http = consent_site(settings, client).test_client()

    before = fetch(http, "/page")
    fetch(http, "/agree")
    after = fetch(http, "/page")

    assert before.json == {"consented": False}
    assert not [c for c in before.headers.getlist("Set-Cookie") if c.startswith(f"{COOKIE}=")]
    assert after.json == {"consented": True}
    assert http.get_cookie(COOKIE) is not None


def test_flask_secret_key_is_never_used_as_the_identity_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("POSTHOG_IDENTITY_SECRET", "POSTHOG_API_KEY", "POSTHOG_PROJECT_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    app = site()
    assert app.secret_key

    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_SECRET"):
        init_app(app)


@pytest.mark.parametrize(
    ("proxyfix_after_init_app", "secure"),
    [pytest.param(True, True, id="proxyfix-outside"), pytest.param(False, False, id="inside")],
)
def test_proxyfix_wrapped_after_init_app_lets_auto_secure_see_https(
    settings: Settings, client: posthog.Client, proxyfix_after_init_app: bool, secure: bool
) -> None:
    app = site()
    if proxyfix_after_init_app:
        init_app(app, settings=settings, client=client)
        app.wsgi_app = ProxyFix(app.wsgi_app, x_proto=1)  # type: ignore[method-assign]
    else:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_proto=1)  # type: ignore[method-assign]
        init_app(app, settings=settings, client=client)

    reply = fetch(app.test_client(), "/whoami", headers={"X-Forwarded-Proto": "https"})

    [cookie] = [parse_set_cookie(h) for h in reply.headers.getlist("Set-Cookie")]
    assert cookie.name == COOKIE
    assert ("secure" in cookie.attributes) is secure


def test_posthogs_own_flask_integration_inside_ours_keeps_the_cookies_identity(
    settings: Settings, client: posthog.Client, sink: Sink
) -> None:
    from posthog.integrations.flask import PosthogFlaskIntegration

    app = Flask(__name__)

    @app.get("/")
    def home() -> str:
        client.capture("Viewed")
        return "ok"

    init_app(app, settings=settings, client=client)
    # Registered last, its before_request runs last: it opens a fresh posthog
    # context and identifies it from X-POSTHOG-DISTINCT-ID.
    PosthogFlaskIntegration(app, client=client)
    anonymous_id = str(uuid.uuid4())
    cookie = CookieCodec((SECRET,)).dumps(CookieState(anonymous_id, issued_at=2**31))
    http = app.test_client()
    http.set_cookie("ph_identity", cookie)

    assert http.get("/", headers={"X-POSTHOG-DISTINCT-ID": "someone-else"}).status_code == 200

    [event] = sink.wait_for(event="Viewed", count=1)
    assert event["distinct_id"] == anonymous_id


# ---------------------------------------------------------------------------
# Feature flags: the flag context hook runs inside Flask's request context


def test_flask_init_app_flag_context_reads_flask_request_inside_its_context(
    flag_sink: Sink, local_client: posthog.Client
) -> None:
    app = flask.Flask(__name__)

    @app.get("/")
    def page() -> str:
        return "<html><head></head><body>page</body></html>"

    def plan() -> FlagContext:
        # flask.request exists only inside Flask's request context.
        return FlagContext(person_properties={"plan": flask.request.headers["X-Plan"]})

    init_app(
        app,
        settings=Settings(
            secrets=(SECRET,), api_key=API_KEY, host=flag_sink.url, bootstrap_flags=True
        ),
        client=local_client,
        flag_context=plan,
    )
    pro = call_wsgi(app, "GET", "/", {"X-Plan": "pro"})
    free = call_wsgi(app, "GET", "/", {"X-Plan": "free"})

    assert [bootstrap(reply) is not None for reply in (pro, free)] == [True, True]
    assert (bootstrap(pro) or {})["values"]["pro-dashboard"] is True
    assert (bootstrap(free) or {})["values"]["pro-dashboard"] is False


def test_a_views_capture_carries_the_request_properties(
    settings: Settings, client: posthog.Client, sink: Sink
) -> None:
    app = Flask(__name__)

    @app.get("/orders/<number>")
    def order(number: str) -> str:
        client.capture("Order Viewed")
        return "ok"

    init_app(app, settings=settings, client=client)
    reply = fetch(app.test_client(), "/orders/7", headers={"User-Agent": "Agent/1"})
    assert reply.status_code == 200

    [event] = sink.wait_for(event="Order Viewed", count=1)
    properties = event["properties"]
    assert properties["$current_url"] == "http://localhost/orders/7"
    assert properties["$request_method"] == "GET"
    assert properties["$request_path"] == "/orders/7"
    assert properties["$user_agent"] == "Agent/1"
    assert properties["$ip"] == "127.0.0.1"
