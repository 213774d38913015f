"""What both adapters share, built once per middleware: settings, cookies, client, snippet.

Each request then gets an `Exchange` (exchange.py) over the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

from posthog.client import Client

from .client import flush, process_client
from .consent import ConsentHook
from .cookies import CookieWriter, find_identity
from .flags import FlagContextHook, FlagSource
from .hosts import app_host
from .identity import (
    NOTHING,
    InvalidUserId,
    Report,
    coerce_user_id,
)
from .linking import RecentLinks
from .logs import WarnOnce, logger
from .proxy import Proxy
from .session import persistence_cookie
from .settings import ENV_VARS, MIN_SECRET_LENGTH, Settings
from .signing import CookieCodec, Verified
from .snippet import Snippet

__all__ = ["BYPASSED", "Engine", "logger"]

#: Key the adapters set in the environ/scope of a request they pass through on
#: purpose (excluded path, kill switch, CORS preflight), so framework glue stays quiet about it.
BYPASSED = "posthog_identity.bypassed"

_Native = TypeVar("_Native")


class Engine:
    """Per-middleware state, built once: settings, cookies, client, snippet, link memory."""

    def __init__(
        self,
        settings: Settings | None = None,
        client: Client | None = None,
        init_options: Mapping[str, Any] | None = None,
        flag_context: FlagContextHook | None = None,
        consent: ConsentHook | None = None,
    ) -> None:
        self.settings = Settings.from_env() if settings is None else settings
        self.flag_context = flag_context
        self.consent_hook = consent
        if init_options:
            # Validated like the environment variable, at start-up.
            options = {**self.settings.init_options, **init_options}
            self.settings = replace(self.settings, init_options=options)
        self.codec = CookieCodec(self.settings.secrets)
        self.cookies = CookieWriter(self.settings)
        self.links = RecentLinks()
        self.warn_once = WarnOnce()
        client = process_client(self.settings, client)
        self.client = client
        settings = self.settings
        self.proxy: Proxy | None = None
        if settings.proxy_path is not None and not settings.disabled:
            self.proxy = Proxy(
                settings.proxy_path,
                settings.host,
                max_body=settings.proxy_max_body,
                timeout=settings.proxy_timeout,
                trusted_proxies=settings.trusted_proxies,
                concurrency=settings.proxy_concurrency,
            )
        self.snippet: Snippet | None = None
        if settings.inject and self.api_key is not None:
            api_host, script_url = settings.host, settings.script_url
            page_options: Mapping[str, Any] = settings.init_options
            if settings.proxy_path is not None:
                # posthog-js talks to the site's own origin; links to PostHog's app stay.
                api_host = settings.proxy_path
                script_url = script_url or f"{settings.proxy_path}/static/array.js"
                page_options = {"ui_host": app_host(settings.host), **page_options}
            self.snippet = Snippet(self.api_key, api_host, script_url, page_options, settings)
        self.flags: FlagSource | None = None
        if self.settings.bootstrap_flags and self.client is not None:
            wanted = self.settings.bootstrap_flags
            self.flags = FlagSource(
                self.client,
                wanted if isinstance(wanted, tuple) else (),
                local=_evaluates_locally(self.client, self.settings),
                timeout=self.settings.flags_timeout,
            )
        #: posthog-js's persistence cookie, where the browser keeps its session id.
        self.persistence_cookie: str | None = None
        if self.api_key is not None:
            self.persistence_cookie = persistence_cookie(self.api_key, self.settings.init_options)
        newest = self.settings.secrets[0]
        if len(newest) < MIN_SECRET_LENGTH and not self.settings.disabled:
            # Accepted, so tests and demos can use short ones; guessable in production.
            logger.warning(
                "posthog_identity: %s: the newest secret has %d characters; use at least %d "
                "random ones (python3 -c 'import secrets; print(secrets.token_urlsafe(32))')",
                ENV_VARS["secrets"],
                len(newest),
                MIN_SECRET_LENGTH,
            )
        if self.client is None and not self.settings.disabled:
            logger.warning(
                "posthog_identity: no PostHog API key (POSTHOG_API_KEY): identity is "
                "resolved but no events are sent and no snippet is injected"
            )

    @property
    def api_key(self) -> str | None:
        """The project key in use: the given client's, else the settings'."""
        key = getattr(self.client, "api_key", None)
        return key if isinstance(key, str) and key else self.settings.api_key

    def bypasses(
        self,
        path: str,
        method: str = "GET",
        header: Callable[[_Native, str], str | None] | None = None,
        native: _Native | None = None,
    ) -> bool:
        """True when the middleware must pass this request through untouched:
        the kill switch, an excluded path, a CORS preflight.

        `header(native, name)` reads a request header; it is asked only for an
        OPTIONS request. A preflight is the browser's question before a
        cross-origin call: no identity, no cookie, no context belong on it.
        """
        if self.settings.disabled:
            return True
        if (
            method == "OPTIONS"
            and header is not None
            and native is not None
            and header(native, "access-control-request-method") is not None
        ):
            return True
        for prefix in self.settings.exclude_paths:
            if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                return True
        return False

    def coerce(self, value: object) -> Report:
        """A user id from a callback or `identify_user`; invalid ones report nothing."""
        try:
            return coerce_user_id(value)
        except InvalidUserId as error:
            self.warn_once(
                f"user-id:{error.kind}",
                "ignoring a user id: %s; the request reports nothing",
                error,
            )
            return NOTHING

    def read_user(self, callback: Callable[[], object]) -> Report:
        """Call a user callback; an exception reports nothing (logged once per kind)."""
        try:
            value = callback()
        except Exception as error:
            self.callback_failed(error)
            return NOTHING
        return self.coerce(value)

    def callback_failed(self, error: BaseException) -> None:
        kind = type(error).__name__
        self.warn_once(
            f"callback:{kind}",
            "the user_id callback raised %s; the request reports nothing",
            kind,
            exc=error,
        )

    def read_cookie(self, header: str) -> Verified | None:
        """The verified identity cookie of a Cookie header, or None."""
        return find_identity(header, self.settings.cookie_name, self.codec)

    def flush(self) -> None:
        """Deliver queued events (shutdown); never raises, never waits unbounded."""
        if self.client is not None:
            flush([self.client])


def _evaluates_locally(client: Client, settings: Settings) -> bool:
    """Whether flags can be evaluated locally: only a client holding a personal key can.

    The key in the settings reaches the client we build, and the module client
    built for us (client.py); a client that already existed without one (passed
    in, or posthog's module client built before the middleware) evaluates
    remotely instead, and start-up says so once.
    """
    if getattr(client, "personal_api_key", None):
        return True
    if settings.personal_api_key is not None:
        logger.warning(
            "posthog_identity: %s is set, but the posthog client the middleware sends "
            "through (client=, or posthog's module client built before the middleware) "
            "has no personal key: flags are evaluated remotely, one /flags request per "
            "page within %s (%ss). Build that client with secret_key=..., or let the "
            "middleware build it, for local evaluation",
            ENV_VARS["personal_api_key"],
            ENV_VARS["flags_timeout"],
            settings.flags_timeout,
        )
    return False
