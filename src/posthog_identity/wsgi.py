"""WSGI adapter: translates environ/start_response for the engine; no identity logic."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .context import bind, enrich_events
from .engine import BYPASSED, Engine, logger
from .exchange import Exchange, RequestInfo
from .identity import NOTHING, Report
from .wsgi_body import Head, run
from .wsgi_proxy import forward

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from posthog.client import Client

    from .consent import ConsentHook
    from .flags import FlagContextHook
    from .settings import Settings

__all__ = ["IdentityMiddleware"]

UserIdCallback = Callable[["WSGIEnvironment"], object]


class IdentityMiddleware:
    """Wrap a WSGI app: ``app = IdentityMiddleware(app)``.

    :param settings: default ``Settings.from_env()``.
    :param user_id: ``callable(environ)`` returning the user's id, or None when
        nobody is logged in; default: ``environ["REMOTE_USER"]`` when present.
    :param client: a ``posthog.Client``; default: one built from the settings.
    :param init_options: extra posthog-js ``init`` options for the snippet.
    :param flag_context: ``callable(native request) -> FlagContext`` giving person
        properties and groups for flag evaluation (POSTHOG_IDENTITY_BOOTSTRAP_FLAGS).
    :param consent: ``callable(environ)`` returning True (consented), False
        (refused) or None (no record: the consent cookie decides), read when
        POSTHOG_IDENTITY_CONSENT is opt-in or opt-out; one that raises means
        no consent for that request.
    """

    def __init__(
        self,
        app: WSGIApplication,
        settings: Settings | None = None,
        *,
        user_id: UserIdCallback | None = None,
        client: Client | None = None,
        init_options: Mapping[str, Any] | None = None,
        flag_context: FlagContextHook | None = None,
        consent: ConsentHook | None = None,
    ) -> None:
        self.app = app
        self.user_id = user_id
        self.engine = Engine(settings, client, init_options, flag_context, consent)
        enrich_events(self.engine.client)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        get = environ.get
        path, method = get("PATH_INFO", ""), get("REQUEST_METHOD", "GET")
        proxy = self.engine.proxy
        if proxy is not None and proxy.matches(path):
            return forward(proxy, environ, start_response)
        if self.engine.bypasses(path, method, _header, environ):
            environ[BYPASSED] = True
            return self.app(environ, start_response)
        try:
            request = RequestInfo(
                method,
                get("wsgi.url_scheme", "http"),
                path,
                get("HTTP_COOKIE", ""),
                get("HTTP_SEC_GPC", ""),
                get("HTTP_DNT", ""),
                get("HTTP_HOST") or _server_host(environ),
                get("SCRIPT_NAME", "") + path,
                get("HTTP_USER_AGENT", ""),
                get("REMOTE_ADDR", ""),
                get("HTTP_X_FORWARDED_FOR", ""),
                get("HTTP_X_POSTHOG_SESSION_ID", ""),
                get("HTTP_X_POSTHOG_WINDOW_ID", ""),
                get(_DISTINCT_ID, ""),
            )
            exchange = Exchange(self.engine, request, self.read_user(environ), environ)
            if _DISTINCT_ID in environ:
                # A middleware inside ours that trusts this header (posthog's
                # own) must agree with the verified distinct id.
                environ[_DISTINCT_ID] = exchange.identity.distinct_id
        except Exception:
            logger.exception("posthog_identity: could not start; the request passes through")
            return self.app(environ, start_response)
        # The app and its iterable run in one private context, so captures made
        # while a streamed body is produced still carry this request's identity.
        head = Head(exchange, start_response, self.read_user, environ)
        return run(self.app, environ, head, bind(exchange))

    def read_user(self, environ: WSGIEnvironment) -> Report:
        if self.user_id is not None:
            callback = self.user_id
            return self.engine.read_user(lambda: callback(environ))
        if "REMOTE_USER" in environ:
            return self.engine.coerce(environ["REMOTE_USER"])
        return NOTHING


_DISTINCT_ID = "HTTP_X_POSTHOG_DISTINCT_ID"


def _header(environ: WSGIEnvironment, name: str) -> str | None:
    """Request header `name` (lower case, dashes) as PEP 3333 keys it, or None."""
    value = environ.get("HTTP_" + name.upper().replace("-", "_"))
    return value if isinstance(value, str) else None


def _server_host(environ: WSGIEnvironment) -> str:
    """The host a request without a Host header was served on (PEP 3333's URL reconstruction)."""
    name, port = environ.get("SERVER_NAME", ""), str(environ.get("SERVER_PORT", ""))
    default = "443" if environ.get("wsgi.url_scheme") == "https" else "80"
    return name if not port or port == default else f"{name}:{port}"
