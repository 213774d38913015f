"""What both adapters share: an `Engine` per middleware, an `Exchange` per request.

The adapters translate their protocol into a `RequestInfo` and response headers;
everything about identity (cookie, resolver, link, failure policy) happens here.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, NamedTuple

from posthog.client import Client
from werkzeug.http import dump_cookie, parse_cookie, parse_dict_header

from .client import FLUSH_TIMEOUT, process_client
from .consent import FAILED, CallbackResult, Consent, ConsentState, Signals, decide, header_is_set
from .flags import FlagContext, FlagContextHook, Flags, FlagSource
from .html import HtmlInjector, may_inject
from .identity import (
    NOTHING,
    Identity,
    InvalidUserId,
    Report,
    Resolution,
    Transition,
    coerce_user_id,
    resolve,
)
from .linking import RecentLinks, send_link
from .settings import Settings
from .signing import CookieCodec, Verified
from .snippet import Snippet, csp_nonce

__all__ = ["BYPASSED", "ConsentHook", "Engine", "Exchange", "RequestInfo", "logger"]

logger = logging.getLogger("posthog_identity")

#: Key the adapters set in the environ/scope of a request they pass through on
#: purpose (excluded path, kill switch), so framework glue stays quiet about it.
BYPASSED = "posthog_identity.bypassed"


class RequestInfo(NamedTuple):
    """The little the core needs to know about a request (a tuple: built on every request)."""

    method: str
    scheme: str
    path: str  #: below the app's mount point
    cookie_header: str = ""
    sec_gpc: str = ""  #: the Sec-GPC header (Global Privacy Control)
    dnt: str = ""  #: the DNT header (Do Not Track)


ConsentHook = Callable[[Any], "bool | None"]
"""``callable(native request) -> True / False / None``: the app's own consent record."""

_BY_MODE = Consent(ConsentState.GRANTED, "mode")


class Engine:
    """Per-middleware state, built once: settings, cookie codec, client, link memory."""

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
        self.links = RecentLinks()
        self._warned: set[str] = set()
        self._warned_lock = threading.Lock()
        self.owns_client = client is None
        client = process_client(self.settings, client)
        self.client = client
        self.snippet: Snippet | None = None
        if self.settings.inject and self.api_key is not None:
            self.snippet = Snippet(
                self.api_key,
                self.settings.host,
                self.settings.script_url,
                self.settings.init_options,
                self.settings,
            )
        self.flags: FlagSource | None = None
        if self.settings.bootstrap_flags and self.client is not None:
            wanted = self.settings.bootstrap_flags
            personal = self.settings.personal_api_key or getattr(client, "personal_api_key", None)
            self.flags = FlagSource(
                self.client,
                wanted if isinstance(wanted, tuple) else (),
                local=bool(personal),
                timeout=self.settings.flags_timeout,
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

    def bypasses(self, path: str) -> bool:
        """True when the middleware must pass this request through untouched."""
        if self.settings.disabled:
            return True
        for prefix in self.settings.exclude_paths:
            if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                return True
        return False

    def begin(
        self, request: RequestInfo, report: Report = NOTHING, native: object = None
    ) -> Exchange:
        """Start a request; `native` (environ or scope) is handed to user hooks."""
        return Exchange(self, request, report, native)

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
        prefix = self.settings.cookie_name + "="
        start = header.find(prefix)
        if start == -1:
            return None
        while start != -1:
            # A whole cookie name only: at the start or after a separator.
            if start == 0 or header[start - 1] in "; \t":
                begin = start + len(prefix)
                end = header.find(";", begin)
                value = (header[begin:] if end == -1 else header[begin:end]).strip()
                # A client may quote the value; ours never needs escapes (base64url
                # and dots), so dropping the quotes is the whole unquoting.
                if len(value) > 1 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                verified = self.codec.loads(value)
                if verified is not None:
                    return verified
            start = header.find(prefix, start + 1)
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

    __slots__ = (
        "_asked",
        "_consent",
        "_ephemeral",
        "_explicit",
        "_exposed",
        "_finished",
        "_flags",
        "_granted",
        "_has_asked",
        "_minted",
        "_now",
        "_reported",
        "_resolution",
        "_verified",
        "engine",
        "native",
        "request",
    )

    def __init__(
        self, engine: Engine, request: RequestInfo, report: Report, native: object = None
    ) -> None:
        self.engine = engine
        self.request = request
        self.native = native
        # Created on first use: most requests never read a flag.
        self._flags: dict[str, Flags | None] | None = None
        self._exposed: set[str] | None = None
        self._now = int(time.time())
        self._verified = engine.read_cookie(request.cookie_header)
        self._reported = report
        self._explicit: Report | None = None
        self._minted: str | None = None
        self._resolution: Resolution | None = None
        self._finished = False
        self._granted: bool | None = None  # grant_consent() / revoke_consent()
        self._consent: Consent | None = None
        self._asked: CallbackResult = None
        self._has_asked = False
        self._ephemeral: str | None = None

    @property
    def explicit(self) -> bool:
        """True once the app called identify_user()/forget_user() in this request."""
        return self._explicit is not None

    def changes(self, report: Report) -> bool:
        """Would `report(report)` change anything?"""
        return report is not NOTHING and report != self._reported

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
    def consent(self) -> Consent:
        """This request's consent decision (see `consent.decide`)."""
        if self._consent is None:
            self._consent = self._decide()
        return self._consent

    def _decide(self) -> Consent:
        settings = self.engine.settings
        if settings.consent == "not-required":
            return _BY_MODE
        cookies = _cookies(self.request.cookie_header)
        if self._granted is None and not self._has_asked:
            self._has_asked = True
            self._asked = self._ask_consent()
        signals = Signals(
            explicit=self._granted,
            callback=self._asked,
            cookie=cookies.get(settings.consent_cookie),
            gpc=header_is_set(self.request.sec_gpc),
            dnt=header_is_set(self.request.dnt),
        )
        return decide(settings, signals)

    def _ask_consent(self) -> CallbackResult:
        """The app's consent callable, once; a failure counts as no consent (fail closed)."""
        hook = self.engine.consent_hook
        if hook is None:
            return None
        try:
            value: object = hook(self.native)
        except Exception as error:
            self.engine.warn_once(
                f"consent:{type(error).__name__}",
                "the consent callable raised %s; no consent for this request",
                type(error).__name__,
                exc=error,
            )
            return FAILED
        if value is None or isinstance(value, bool):
            return value
        if inspect.isawaitable(value):
            close = getattr(value, "close", None)
            if close is not None:
                close()  # never awaited: closed so it does not warn at collection
        self.engine.warn_once(
            f"consent-value:{type(value).__name__}",
            "the consent callable must return True, False or None (a plain function, "
            "not async), got %s; no consent for this request",
            type(value).__name__,
        )
        return FAILED

    def ask_consent_again(self) -> None:
        """Forget the consent callable's answer: its source (a framework's request) is ready now."""
        if self._has_asked:
            self._has_asked = False
            self._consent = None
            self._resolution = None

    def set_consent(self, granted: bool) -> bool:
        """grant_consent() / revoke_consent(); False when the mode needs no consent."""
        if self.engine.settings.consent == "not-required":
            return False
        self._granted = granted
        self._consent = None
        self._resolution = None
        return True

    def _ephemeral_id(self) -> str:
        # Without consent: one random id per request, never stored or linked.
        if self._ephemeral is None:
            self._ephemeral = str(uuid.uuid4())
        return self._ephemeral

    @property
    def resolution(self) -> Resolution:
        if self._resolution is not None:
            return self._resolution
        if not self.consent.granted:
            identity = Identity(self._ephemeral_id(), consented=False)
            self._resolution = Resolution(identity, Transition.NONE)
            return self._resolution
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
        identity = self.resolution.identity
        if self.engine.flags is None:
            return identity
        return replace(identity, flags=_RequestFlags(self))

    def flags(self) -> Flags | None:
        """This request's flags for its current distinct id: evaluated once, then kept."""
        source = self.engine.flags
        if source is None:
            return None
        distinct_id = self.resolution.identity.distinct_id
        if self._flags is None:
            self._flags = {}
        if distinct_id not in self._flags:
            usable, context = self._flag_context()
            self._flags[distinct_id] = source.evaluate(distinct_id, context) if usable else None
        return self._flags[distinct_id]

    def flags_would_wait(self, status: int, headers: list[tuple[str, str]]) -> bool:
        """Would `injector` wait on the network for flags (remote, not evaluated yet)?

        The ASGI adapter evaluates them in a thread first, off the event loop.
        """
        source = self.engine.flags
        return (
            source is not None
            and not source.local
            and self.consent.granted
            and self.resolution.identity.distinct_id not in (self._flags or ())
            and self.engine.snippet is not None
            and may_inject(self.request.method, status, headers)
            and not _shared_cacheable(headers)
        )

    def _flag_context(self) -> tuple[bool, FlagContext | None]:
        """(usable, context) from the user's hook; a hook that raises means no flags."""
        hook = self.engine.flag_context
        if hook is None:
            return True, None
        try:
            return True, hook(self.native)
        except Exception as error:
            self.engine.warn_once(
                f"flag-context:{type(error).__name__}",
                "the flag_context hook raised %s; no flag bootstrap for this request",
                type(error).__name__,
                exc=error,
            )
            return False, None

    def expose(self, key: str, value: object) -> None:
        """Report that the app read `key` on the server, once per request and key."""
        client = self.engine.client
        if self._exposed is None:
            self._exposed = set()
        if key in self._exposed or client is None:
            return
        self._exposed.add(key)
        try:
            client.capture(
                "$feature_flag_called",
                properties={"$feature_flag": key, "$feature_flag_response": value},
            )
        except Exception:
            logger.exception("posthog_identity: reporting a flag exposure failed")

    def injector(self, status: int, headers: list[tuple[str, str]]) -> HtmlInjector | None:
        """An injector for this response's HTML body, or None when it is left alone.

        Call after `finish`: the snippet carries the request's final identity,
        or none at all on a page a shared cache may serve to others.
        """
        snippet = self.engine.snippet
        try:
            if snippet is None or not may_inject(self.request.method, status, headers):
                return None
            shared = _shared_cacheable(headers)
            consent = self.consent.state
            identity = None if shared else self.resolution.identity
            flags = None if shared or consent is not ConsentState.GRANTED else self.flags()
            rendered = snippet.render(identity, csp_nonce(headers), flags, consent)
            return HtmlInjector(rendered, self.engine.settings.inject_lookahead)
        except Exception:
            logger.exception(
                "posthog_identity: preparing the snippet failed; the page is untouched"
            )
            return None

    def personless(self) -> bool:
        """Should this request's server captures skip person processing?"""
        identity = self.identity
        if not identity.consented:
            return True
        if self.engine.settings.person_profiles != "identified_only" or identity.is_identified:
            return False
        # A remembered but unreported user: their anonymous id's events belong to
        # their person only if it was linked into them (a login); one minted for a
        # user already signed in (first visit, account switch) never was, and
        # processing it would make a stray person.
        return not (identity.signed_in and self._linked())

    def _linked(self) -> bool:
        resolution = self.resolution
        state = resolution.cookie or (self._verified.state if self._verified else None)
        return state is not None and state.linked

    def finish(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """At response start: send the link, return the headers to append (Set-Cookie).

        Without consent the identity cookie the browser sent is deleted (unless
        the decision is unknown); grant_consent()/revoke_consent() also record
        the decision in the consent cookie. Runs once per request; later calls
        (a WSGI error page after a failed response) return the same headers
        without sending the link again.
        """
        try:
            resolution = self.resolution
            if not self._finished:
                self._finished = True
                self._send_link(resolution)
            added = []
            if resolution.cookie is not None:
                added.append(("Set-Cookie", self._set_cookie(resolution)))
            elif self._forgets_cookie():
                added.append(("Set-Cookie", self._delete_cookie()))
            if self._granted is not None:
                added.append(("Set-Cookie", self._consent_cookie(self._granted)))
            # Checked last: most responses have nothing to add.
            return [] if added and _shared_cacheable(headers) else added
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

    def _secure(self) -> bool:
        secure = self.engine.settings.secure_cookie
        return self.request.scheme in ("https", "wss") if secure is None else secure

    def _set_cookie(self, resolution: Resolution) -> str:
        settings = self.engine.settings
        assert resolution.cookie is not None
        return dump_cookie(
            settings.cookie_name,
            self.engine.codec.dumps(resolution.cookie),
            max_age=settings.cookie_max_age,
            path="/",
            domain=settings.cookie_domain,
            secure=self._secure(),
            httponly=True,
            samesite=settings.cookie_samesite,
        )

    def _forgets_cookie(self) -> bool:
        """No consent (known to be missing, not unknown) and the browser sent our cookie."""
        state = self.consent.state
        if state is ConsentState.GRANTED or state is ConsentState.UNKNOWN:
            return False
        cookies = _cookies(self.request.cookie_header)
        return self.engine.settings.cookie_name in cookies

    def _delete_cookie(self) -> str:
        settings = self.engine.settings
        return dump_cookie(
            settings.cookie_name,
            "",
            max_age=0,
            path="/",
            domain=settings.cookie_domain,
            secure=self._secure(),
            httponly=True,
            samesite=settings.cookie_samesite,
        )

    def _consent_cookie(self, granted: bool) -> str:
        """The consent cookie, as a banner would write it (readable by the page's scripts)."""
        settings = self.engine.settings
        values = settings.consent_granted if granted else settings.consent_denied
        return dump_cookie(
            settings.consent_cookie,
            values[0],
            max_age=settings.cookie_max_age,
            path="/",
            domain=settings.cookie_domain,
            secure=self._secure(),
            httponly=False,
            samesite=settings.cookie_samesite,
        )


class _RequestFlags:
    """The request's flags as `Identity.flags` sees them (see `identity.FlagAccess`)."""

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    def values(self) -> Mapping[str, bool | str]:
        flags = self._exchange.flags()
        return {} if flags is None else flags.values

    def payloads(self) -> Mapping[str, Any]:
        flags = self._exchange.flags()
        return {} if flags is None else flags.payloads

    def expose(self, key: str, value: object) -> None:
        self._exchange.expose(key, value)


def _cookies(header: str) -> Mapping[str, str]:
    """All cookies of a header; one that is not UTF-8 (werkzeug refuses it) reads as none."""
    try:
        return parse_cookie(header)
    except ValueError:  # UnicodeDecodeError
        logger.debug("posthog_identity: a Cookie header that is not UTF-8 is ignored")
        return {}


def _shared_cacheable(headers: Iterable[tuple[str, str]]) -> bool:
    """`Cache-Control: public` or `s-maxage`: a shared cache may serve it to others."""
    for name, value in headers:
        if name.lower() == "cache-control":
            directives = {key.lower() for key in parse_dict_header(value)}
            if "public" in directives or "s-maxage" in directives:
                return True
    return False
