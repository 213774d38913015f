"""What both adapters share: an `Engine` per middleware, an `Exchange` per request.

The adapters translate their protocol into a `RequestInfo` and response headers;
everything about identity (cookie, resolver, link, failure policy) happens here.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from posthog.client import Client
from werkzeug.http import dump_cookie, parse_cookie, parse_dict_header

from .html import HtmlInjector, may_inject
from .identity import (
    NOTHING,
    Identity,
    InvalidUserId,
    Report,
    Resolution,
    coerce_user_id,
    resolve,
)
from .linking import RecentLinks, send_link
from .settings import Settings
from .signing import CookieCodec, Verified
from .snippet import Snippet, csp_nonce

__all__ = ["Engine", "Exchange", "RequestInfo", "logger"]

logger = logging.getLogger("posthog_identity")

#: How long a shutdown waits for queued events to reach PostHog.
FLUSH_TIMEOUT = 5.0


# Clients the middlewares use, flushed together at process exit (WSGI has no
# shutdown event); posthog's own exit hook waits one second in all.
_owned_clients: weakref.WeakSet[Client] = weakref.WeakSet()


def _flush_at_exit() -> None:
    deadline = time.monotonic() + FLUSH_TIMEOUT
    for client in list(_owned_clients):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            client.flush(timeout_seconds=remaining)
        except Exception:
            logger.exception("posthog_identity: flushing events at exit failed")


atexit.register(_flush_at_exit)


@dataclass(frozen=True)
class RequestInfo:
    """The little the core needs to know about a request."""

    method: str
    scheme: str
    path: str  #: below the app's mount point
    cookie_header: str = ""


class Engine:
    """Per-middleware state, built once: settings, cookie codec, client, link memory."""

    def __init__(
        self,
        settings: Settings | None = None,
        client: Client | None = None,
        init_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = Settings.from_env() if settings is None else settings
        if init_options:
            # Validated like the environment variable, at start-up.
            options = {**self.settings.init_options, **init_options}
            self.settings = replace(self.settings, init_options=options)
        self.codec = CookieCodec(self.settings.secrets)
        self.links = RecentLinks()
        self._warned: set[str] = set()
        self._warned_lock = threading.Lock()
        self.owns_client = client is None
        if client is None:
            client = self._build_client()
        else:
            _owned_clients.add(client)
        self.client = client
        self.snippet: Snippet | None = None
        if self.settings.inject and self.api_key is not None:
            self.snippet = Snippet(
                self.api_key,
                self.settings.host,
                self.settings.script_url,
                self.settings.init_options,
            )
        if self.client is None and not self.settings.disabled:
            logger.warning(
                "posthog_identity: no PostHog API key (POSTHOG_API_KEY): identity is "
                "resolved but no events are sent and no snippet is injected"
            )

    def _build_client(self) -> Client | None:
        if self.settings.api_key is None or self.settings.disabled:
            return None
        client = Client(self.settings.api_key, host=self.settings.host)
        _owned_clients.add(client)
        return client

    @property
    def api_key(self) -> str | None:
        """The project key in use: the given client's, else the settings'."""
        key = getattr(self.client, "api_key", None)
        return key if isinstance(key, str) and key else self.settings.api_key

    def bypasses(self, path: str) -> bool:
        """True when the middleware must pass this request through untouched."""
        if self.settings.disabled:
            return True
        for prefix in self.settings.exclude_paths:
            if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                return True
        return False

    def begin(self, request: RequestInfo, report: Report = NOTHING) -> Exchange:
        return Exchange(self, request, report)

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

    def warn_once(
        self, kind: str, message: str, *args: object, exc: BaseException | None = None
    ) -> None:
        with self._warned_lock:
            if kind in self._warned:
                return
            self._warned.add(kind)
        logger.warning(message, *args, exc_info=exc)

    def read_cookie(self, header: str) -> Verified | None:
        """The first of our cookies (there may be duplicates) that verifies."""
        if not header:
            return None
        for value in parse_cookie(header).getlist(self.settings.cookie_name):
            verified = self.codec.loads(value)
            if verified is not None:
                return verified
        logger.debug("posthog_identity: no valid identity cookie; a new anonymous id is minted")
        return None

    def flush(self) -> None:
        """Deliver queued events (shutdown); never raises, never waits unbounded."""
        if self.client is None:
            return
        try:
            self.client.flush(timeout_seconds=FLUSH_TIMEOUT)
        except Exception:
            logger.exception("posthog_identity: flushing events failed")


class Exchange:
    """One request's identity: lazily resolved, re-resolved when the report changes."""

    def __init__(self, engine: Engine, request: RequestInfo, report: Report) -> None:
        self.engine = engine
        self.request = request
        self._now = int(time.time())
        self._verified = engine.read_cookie(request.cookie_header)
        self._reported = report
        self._explicit: Report | None = None
        self._minted: str | None = None
        self._resolution: Resolution | None = None
        self._finished = False

    @property
    def explicit(self) -> bool:
        """True once the app called identify_user()/forget_user() in this request."""
        return self._explicit is not None

    def report(self, report: Report) -> None:
        """What the user source says now; ignored after an explicit call.

        NOTHING never replaces an earlier report of the same request: reporting
        nothing changes nothing.
        """
        if report is not NOTHING and report != self._reported:
            self._reported = report
            self._resolution = None

    def set_explicit(self, report: Report) -> None:
        self._explicit = report
        self._resolution = None

    def _mint(self) -> str:
        # One new id per request, however many times the request is re-resolved.
        if self._minted is None:
            self._minted = str(uuid.uuid4())
        return self._minted

    @property
    def resolution(self) -> Resolution:
        if self._resolution is None:
            settings = self.engine.settings
            report = self._explicit if self._explicit is not None else self._reported
            self._resolution = resolve(
                self._verified,
                report,
                now=self._now,
                user_hash=self.engine.codec.user_hash,
                max_age=settings.cookie_max_age,
                reset_on_logout=settings.reset_on_logout,
                new_id=self._mint,
            )
        return self._resolution

    @property
    def identity(self) -> Identity:
        return self.resolution.identity

    def injector(self, status: int, headers: list[tuple[str, str]]) -> HtmlInjector | None:
        """An injector for this response's HTML body, or None when it is left alone.

        Call after `finish`: the snippet carries the request's final identity,
        or none at all on a page a shared cache may serve to others.
        """
        snippet = self.engine.snippet
        try:
            if snippet is None or not may_inject(self.request.method, status, headers):
                return None
            identity = None if _shared_cacheable(headers) else self.identity
            rendered = snippet.render(identity, csp_nonce(headers))
            return HtmlInjector(rendered, self.engine.settings.inject_lookahead)
        except Exception:
            logger.exception(
                "posthog_identity: preparing the snippet failed; the page is untouched"
            )
            return None

    def personless(self) -> bool:
        """Should this request's server captures skip person processing?"""
        # A remembered but unreported user's anonymous id was merged into them:
        # its events belong to their person, so only true visitors are personless.
        identity = self.identity
        return self.engine.settings.person_profiles == "identified_only" and not (
            identity.is_identified or identity.signed_in
        )

    def finish(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """At response start: send the link, return the headers to append (Set-Cookie).

        Runs once per request; later calls (a WSGI error page after a failed
        response) return the same headers without sending the link again.
        """
        try:
            resolution = self.resolution
            if not self._finished:
                self._finished = True
                self._send_link(resolution)
            if resolution.cookie is None or _shared_cacheable(headers):
                return []
            return [("Set-Cookie", self._set_cookie(resolution))]
        except Exception:
            logger.exception(
                "posthog_identity: finishing the response failed; it is sent untouched"
            )
            return []

    def _send_link(self, resolution: Resolution) -> None:
        link, client = resolution.link, self.engine.client
        if link is None or client is None or not self.engine.links.first_time(link):
            return
        try:
            send_link(client, link)
        except Exception:
            logger.exception("posthog_identity: sending the login link failed")

    def _set_cookie(self, resolution: Resolution) -> str:
        settings = self.engine.settings
        assert resolution.cookie is not None
        secure = settings.secure_cookie
        if secure is None:
            secure = self.request.scheme in ("https", "wss")
        return dump_cookie(
            settings.cookie_name,
            self.engine.codec.dumps(resolution.cookie),
            max_age=settings.cookie_max_age,
            path="/",
            domain=settings.cookie_domain,
            secure=secure,
            httponly=True,
            samesite=settings.cookie_samesite,
        )


def _shared_cacheable(headers: Iterable[tuple[str, str]]) -> bool:
    """`Cache-Control: public` or `s-maxage`: a shared cache may serve it to others."""
    for name, value in headers:
        if name.lower() == "cache-control":
            directives = {key.lower() for key in parse_dict_header(value)}
            if "public" in directives or "s-maxage" in directives:
                return True
    return False
