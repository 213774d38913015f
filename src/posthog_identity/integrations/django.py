"""Django glue: tells the core who ``request.user`` is; nothing else.

The WSGI/ASGI middleware wrapped around the project's ``application`` owns the
cookie, the login link and the snippet. This middleware only says which user
Django's authentication found: before the view, so server captures made in the
view carry the user; the moment ``login()`` or ``logout()`` runs in the view
(Django's ``user_logged_in``/``user_logged_out`` signals), so captures right
after them carry the new state; and after the view, where ``request.user`` is
what the response goes out with. Django ships no type hints: requests,
responses and users are ``Any`` here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async

from posthog_identity.context import has_request, report_user
from posthog_identity.engine import BYPASSED, logger
from posthog_identity.identity import NOTHING

__all__ = ["IdentityMiddleware"]

NOT_WRAPPED = """\
posthog_identity: the Django IdentityMiddleware ran outside posthog_identity's \
WSGI/ASGI middleware: no identity cookie, login link or snippet. Wrap the \
application your server loads.
In wsgi.py:
    from django.core.wsgi import get_wsgi_application
    from posthog_identity.wsgi import IdentityMiddleware
    application = IdentityMiddleware(get_wsgi_application())
In asgi.py:
    from django.core.asgi import get_asgi_application
    from posthog_identity.asgi import IdentityMiddleware
    application = IdentityMiddleware(get_asgi_application())
Logged once."""

NO_USER = (
    "posthog_identity: the request has no user when the Django IdentityMiddleware "
    "runs: put 'posthog_identity.integrations.django.IdentityMiddleware' after "
    "'django.contrib.auth.middleware.AuthenticationMiddleware' in MIDDLEWARE. Logged once."
)


class _Process:
    """What is remembered per process rather than per middleware instance: Django
    may build the middleware many times (each test ``Client`` does)."""

    def __init__(self) -> None:
        #: A request came through the wrapper: later ones without it were
        #: bypassed on purpose (an excluded path), not left unwrapped.
        self.seen_wrapper = False
        self._logged: set[str] = set()
        self._lock = threading.Lock()

    def log_once(self, kind: str, level: int, message: str, error: Exception | None = None) -> None:
        with self._lock:
            if kind in self._logged:
                return
            self._logged.add(kind)
        logger.log(level, message, exc_info=error)


_process = _Process()


class IdentityMiddleware:
    """Report ``request.user`` to posthog_identity; sync and async capable.

    Goes in ``MIDDLEWARE`` after ``django.contrib.auth.middleware.AuthenticationMiddleware``,
    with the project's ``wsgi.py``/``asgi.py`` application wrapped in
    ``posthog_identity.wsgi.IdentityMiddleware``/``posthog_identity.asgi.IdentityMiddleware``.
    An authenticated user is ``str(user.pk)``, its stable database identity;
    an anonymous one is nobody.

    :param get_response: the next handler, as Django passes it.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        _listen_to_auth_signals()
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        if not _wrapped(request):
            return self.get_response(request)
        before = getattr(request, "user", None)
        user_id = _guarded(_read, request)
        report_user(user_id)
        response = self.get_response(request)
        if getattr(request, "user", None) is not before:
            # login() or logout() in the view replaced request.user.
            user_id = _guarded(_read, request)
        _settle(user_id)
        return response

    async def __acall__(self, request: Any) -> Any:
        if not _wrapped(request):
            return await self.get_response(request)
        # The attribute only: evaluating the lazy user from the event loop
        # would query the database there (SynchronousOnlyOperation).
        before = getattr(request, "user", None)
        user_id = await _aguarded(_aread(request))
        report_user(user_id)
        response = await self.get_response(request)
        if getattr(request, "user", None) is not before:
            # login()/logout() (or alogin()/alogout()) put another user there,
            # while request.auser() keeps answering the one it cached.
            user_id = await _aguarded(sync_to_async(_read)(request))
        _settle(user_id)
        return response


def _listen_to_auth_signals() -> None:
    """Hear Django's ``login()``/``logout()`` (and ``alogin()``/``alogout()``) as they run.

    Connected once per process (a ``dispatch_uid``), however often Django builds
    the middleware. Signals sent outside a request of the wrapper are ignored.
    """
    from django.contrib.auth.signals import (  # type: ignore[import-untyped]
        user_logged_in,
        user_logged_out,
    )

    user_logged_in.connect(_logged_in, dispatch_uid="posthog_identity.user_logged_in")
    user_logged_out.connect(_logged_out, dispatch_uid="posthog_identity.user_logged_out")


def _logged_in(sender: object, user: Any = None, **extra: object) -> None:
    """``user_logged_in``: the rest of the view's captures carry the user (``str(pk)``)."""
    if has_request():
        _report_guarded(lambda: _user_id(user))


def _logged_out(sender: object, **extra: object) -> None:
    """``user_logged_out`` (sent before the session is flushed): nobody from now on."""
    if has_request():
        _report_guarded(lambda: None)


def _report_guarded(read: Callable[[], object]) -> None:
    # A receiver that raises would break login() itself: never let it.
    try:
        report_user(read())
    except Exception as error:
        kind = type(error).__name__
        _process.log_once(
            f"signal:{kind}",
            logging.WARNING,
            f"posthog_identity: following Django's login/logout signal raised {kind}; "
            "the user is read again after the view. Logged once per kind.",
            error,
        )


def _wrapped(request: Any) -> bool:
    """True inside a request of the WSGI/ASGI wrapper; says once how to fix it when not."""
    if has_request():
        _process.seen_wrapper = True
        return True
    # The wrapper passed this one through on purpose (excluded path, kill switch).
    native = getattr(request, "scope", None) or getattr(request, "environ", None) or {}
    if native.get(BYPASSED):
        return False
    if not _process.seen_wrapper:
        _process.log_once("not-wrapped", logging.ERROR, NOT_WRAPPED)
    return False


def _read(request: Any) -> object:
    user = getattr(request, "user", None)
    if user is None:
        _process.log_once("no-user", logging.ERROR, NO_USER)
        return NOTHING
    return _user_id(user)


async def _aread(request: Any) -> object:
    auser = getattr(request, "auser", None)
    if auser is None:
        # Django before 5.0, or an auth middleware that sets request.user only.
        return await sync_to_async(_read)(request)
    return _user_id(await auser())


def _user_id(user: Any) -> object:
    """Django's user -> what to report: ``str(pk)``, or None for anonymous."""
    if not user.is_authenticated:
        return None
    pk = user.pk
    # An authenticated user never saved has no stable identity: report nothing.
    return NOTHING if pk is None else str(pk)


def _guarded(read: Callable[[Any], object], request: Any) -> object:
    try:
        return read(request)
    except Exception as error:
        return _read_failed(error)


async def _aguarded(read: Awaitable[object]) -> object:
    try:
        return await read
    except Exception as error:
        return _read_failed(error)


def _read_failed(error: Exception) -> object:
    # The view meets the same error if it needs the user; never raise it here.
    kind = type(error).__name__
    _process.log_once(
        f"read:{kind}",
        logging.WARNING,
        f"posthog_identity: reading request.user raised {kind}; the request "
        "reports nothing. Logged once per kind.",
        error,
    )
    return NOTHING


def _settle(user_id: object) -> None:
    """Tell the wrapper which user this response goes out with.

    A report, not a decision: an app's own identify_user()/forget_user() in the
    view still wins, and the wrapper's own read at response start (which finds
    nothing of Django's there) changes nothing.
    """
    report_user(user_id)
