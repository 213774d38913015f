"""Flask glue: ``init_app(app)`` wraps ``app.wsgi_app`` and tells the core who the user is.

Only Flask users import this module, so it imports Flask itself.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from flask import got_request_exception, has_request_context

from posthog_identity.context import has_request, recheck_consent, report_user
from posthog_identity.engine import logger
from posthog_identity.errors import capture_unhandled
from posthog_identity.identity import NOTHING
from posthog_identity.wsgi import IdentityMiddleware

if TYPE_CHECKING:
    from types import ModuleType

    from _typeshed.wsgi import WSGIEnvironment
    from flask import Flask
    from posthog.client import Client

    from posthog_identity.engine import Engine
    from posthog_identity.flags import FlagContext
    from posthog_identity.settings import Settings

__all__ = ["init_app"]

EXTENSION = "posthog_identity"
_T = TypeVar("_T")


def init_app(
    app: Flask,
    *,
    settings: Settings | None = None,
    user_id: Callable[[], object] | None = None,
    client: Client | None = None,
    init_options: Mapping[str, Any] | None = None,
    flag_context: Callable[[], FlagContext | None] | None = None,
    consent: Callable[[], bool | None] | None = None,
) -> IdentityMiddleware:
    """Wrap ``app.wsgi_app`` in the identity middleware and return the middleware.

    The identity secret comes from `settings` (default ``Settings.from_env()``,
    i.e. ``POSTHOG_IDENTITY_SECRET``); Flask's ``SECRET_KEY`` is never reused.

    :param user_id: called with no arguments inside Flask's request context;
        returns the user's id, or None when nobody is logged in. Default:
        Flask-Login's ``current_user.id`` (else ``get_id()``), when the app has a
        ``LoginManager``; without one, visitors stay anonymous unless views call
        ``identify_user``/``forget_user``.
    :param client: a ``posthog.Client``; default: one built from the settings.
    :param init_options: extra posthog-js ``init`` options for the snippet.
    :param flag_context: called with no arguments inside Flask's request
        context; returns the `FlagContext` (person properties, groups) for flag
        evaluation when POSTHOG_IDENTITY_BOOTSTRAP_FLAGS is on.
    :param consent: called with no arguments inside Flask's request context
        (so it may read ``flask.request`` or the session); returns True
        (consented), False (refused) or None (no record: the consent cookie
        decides), when POSTHOG_IDENTITY_CONSENT is opt-in or opt-out.
    :raises RuntimeError: when the app is already wrapped.
    """
    if EXTENSION in app.extensions:
        raise RuntimeError(f"posthog_identity.init_app() already ran for app {app.name!r}")
    user = _FlaskUser(app, user_id)
    middleware = IdentityMiddleware(
        app.wsgi_app,
        settings,
        user_id=user.from_environ,
        client=client,
        init_options=init_options,
        flag_context=None if flag_context is None else _in_request(flag_context),
        consent=None if consent is None else _in_request(consent),
    )
    app.wsgi_app = middleware  # type: ignore[method-assign]
    app.extensions[EXTENSION] = middleware
    hooks = _Hooks(middleware.engine, user, recheck=consent is not None)
    # The middleware reads the user when the request starts (before Flask has a
    # request context: nothing) and when the response starts (Flask calls
    # start_response inside it); these hooks make the user current in between,
    # so captures made in views carry it.
    app.before_request(hooks.before_request)
    if user.flask_login is not None:
        # Weak references to bound methods: they live as long as the app's hook.
        user.flask_login.user_logged_in.connect(hooks.logged_in, app)
        user.flask_login.user_logged_out.connect(hooks.logged_out, app)
    if user_id is None and user.flask_login is None:
        user.announce()
    _capture_errors(app)
    return middleware


class _FlaskUser:
    """Who the user is, read inside the app's request context."""

    def __init__(self, app: Flask, user_id: Callable[[], object] | None) -> None:
        self.app = app
        self.user_id = user_id
        self.flask_login = _import_flask_login()
        self._announced = False
        self._lock = threading.Lock()

    def from_environ(self, environ: WSGIEnvironment) -> object:
        """The middleware's callback: it also runs before Flask pushes its context."""
        return self() if has_request_context() else NOTHING

    def __call__(self) -> object:
        if self.user_id is not None:
            return self.user_id()
        if self.flask_login is None or getattr(self.app, "login_manager", None) is None:
            self.announce()
            return NOTHING
        user = self.flask_login.current_user
        if not user.is_authenticated:
            return None
        # The stable database id first: Flask-Security-Too's get_id() returns a
        # rotatable fs_uniquifier, which would split one person in two.
        stable = getattr(user, "id", None)
        return user.get_id() if stable is None else stable

    def announce(self) -> None:
        """Say once how to report users, when there is no way to read them."""
        if self._announced:  # every request of such an app asks: no lock once said
            return
        with self._lock:
            if self._announced:
                return
            self._announced = True
        logger.info(
            "posthog_identity: Flask app %r has no user source (no Flask-Login "
            "LoginManager, no user_id=): visitors stay anonymous. Pass "
            "init_app(app, user_id=...) or call identify_user()/forget_user() "
            "in your login and logout views",
            self.app.name,
        )


class _Hooks:
    """Flask hooks that report the user to the current request's identity."""

    def __init__(self, engine: Engine, user: _FlaskUser, *, recheck: bool = False) -> None:
        self.engine = engine
        self.user = user
        self.recheck = recheck

    def before_request(self) -> None:
        if has_request():  # False on paths the middleware passes through
            if self.recheck:
                # Asked first before Flask had a request: it answered "no record".
                recheck_consent()
            report_user(self.engine.read_user(self.user))

    def logged_in(self, sender: Flask, **extra: object) -> None:
        """Flask-Login's ``login_user``: later captures in the view carry the user."""
        self.before_request()

    def logged_out(self, sender: Flask, **extra: object) -> None:
        """Flask-Login's ``logout_user`` (sent while ``current_user`` is still the user)."""
        if has_request():
            report_user(None)


def _in_request(hook: Callable[[], _T]) -> Callable[[object], _T | None]:
    """An engine hook (given the environ) that calls `hook` inside Flask's request context."""

    def call(environ: object) -> _T | None:
        return hook() if has_request_context() else None

    return call


def _import_flask_login() -> ModuleType | None:
    try:
        return importlib.import_module("flask_login")
    except ImportError:
        return None


# -- unhandled errors ---------------------------------------------------------


def _capture_errors(app: Flask) -> None:
    """Send the app's unhandled errors to error tracking: Flask answers them with
    a 500 itself, so no WSGI middleware ever sees them."""
    got_request_exception.connect(_got_request_exception, app)


def _got_request_exception(sender: Flask, exception: BaseException, **extra: object) -> None:
    capture_unhandled(exception, "flask.got_request_exception")
