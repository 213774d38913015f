"""One request's side of the middleware: what it says, who it is, and its response plan.

An adapter describes the request (`RequestInfo`) and starts its `Exchange`
over the middleware's `Engine`; at response start `Exchange.respond` returns the
`ResponsePlan` to apply: the headers to add and, for a page to inject, the
body rewrite. Identity, consent and flags are decided here or in the modules
it calls; the adapters only translate.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

from .consent import Consent, ConsentState, RequestConsent, asker
from .cookies import all_cookies
from .flags import RequestFlags
from .html import may_inject
from .identity import (
    NOTHING,
    Identity,
    Report,
    Resolution,
    Transition,
    new_anonymous_id,
    resolve,
)
from .linking import send_link
from .logs import logger
from .response import UNTOUCHED, BodyRewrite, ResponsePlan, shared_cacheable
from .session import (
    client_ip,
    distinct_id_from_cookie,
    identified_in_cookie,
    request_properties,
    session_from_cookie,
    valid_uuid,
)
from .snippet import csp_nonce

if TYPE_CHECKING:
    from .engine import Engine
    from .flags import FlagSource
    from .snippet import Snippet

__all__ = ["Exchange", "RequestInfo"]


class RequestInfo(NamedTuple):
    """The little the core needs to know about a request (a tuple: built on every request)."""

    method: str
    scheme: str
    path: str  #: below the app's mount point
    cookie_header: str = ""
    sec_gpc: str = ""  #: the Sec-GPC header (Global Privacy Control)
    dnt: str = ""  #: the DNT header (Do Not Track)
    host: str = ""  #: the Host header, else the server's name and port
    url_path: str = ""  #: the whole path, mount point included
    user_agent: str = ""
    peer: str = ""  #: the address the connection came from
    forwarded_for: str = ""  #: X-Forwarded-For, believed as far as trusted proxies allow
    session_header: str = ""  #: X-POSTHOG-SESSION-ID, sent by posthog-js
    window_header: str = ""  #: X-POSTHOG-WINDOW-ID, sent by posthog-js
    distinct_header: str = ""  #: X-POSTHOG-DISTINCT-ID: posthog-js's own distinct id


_GRANTED = Consent(ConsentState.GRANTED, "mode")


class Exchange:
    """One request's identity: resolved lazily, again whenever what the request says changes.

    What can change it: the user source (`report`), the app (`set_explicit`,
    `set_consent`), and consent asked again (`ask_consent_again`); each drops
    the cached resolution. `respond` runs at response start.
    """

    __slots__ = (
        "_consent",
        "_ephemeral",
        "_explicit",
        "_identity",
        "_left",
        "_minted",
        "_properties",
        "_reported",
        "_resolution",
        "_responded",
        "_verified",
        "described",
        "engine",
        "flags",
        "native",
        "request",
    )

    def __init__(
        self,
        engine: Engine,
        request: RequestInfo,
        report: Report = NOTHING,
        native: object = None,
    ) -> None:
        """`report` is what the user source says at the start; `native` (the
        environ or scope) is what the app's hooks receive."""
        self.engine = engine
        self.request = request
        self.native = native
        self._verified = engine.read_cookie(request.cookie_header)
        self._reported = report
        self._explicit: Report | None = None
        #: A user this request reported before its current report (a logout in it).
        self._left: str | None = None
        self._minted: str | None = None
        self._properties: dict[str, str] | None = None
        self._ephemeral: str | None = None
        self._resolution: Resolution | None = None
        self._identity: tuple[Identity, Identity] | None = None
        self._responded = False
        #: What `context` put on the posthog context: (a session id?, property keys).
        self.described: tuple[bool, tuple[str, ...]] | None = None
        # Built only where used: the default mode needs no consent, most apps no flags.
        self._consent: RequestConsent | None = None
        if engine.settings.consent != "not-required":
            self._consent = _request_consent(engine, request, native)
        self.flags: RequestFlags | None = None
        if engine.flags is not None:
            self.flags = _request_flags(engine, engine.flags, native)

    # -- what the request says -------------------------------------------------

    @property
    def explicit(self) -> bool:
        """True once the app called identify_user()/forget_user() in this request."""
        return self._explicit is not None

    def changes(self, report: Report) -> bool:
        """Would `report(report)` change anything?"""
        return report is not NOTHING and report != self._reported

    def report(self, report: Report) -> None:
        """What the user source says now. NOTHING never replaces an earlier report
        of the same request: reporting nothing changes nothing."""
        if report is not NOTHING and report != self._reported:
            if self._explicit is None:
                self._leaving(self._reported, report)
            self._reported = report
            self._resolution = None

    def set_explicit(self, report: Report) -> None:
        """identify_user() / forget_user(): wins over the user source from now on."""
        self._leaving(self._reported if self._explicit is None else self._explicit, report)
        self._explicit = report
        self._resolution = None

    def _leaving(self, before: Report, after: Report) -> None:
        # A user who stops being reported: the resolver never takes their id
        # for the browser's anonymous one.
        if isinstance(before, str) and before != after:
            self._left = before

    @property
    def consent(self) -> Consent:
        """This request's consent decision."""
        return _GRANTED if self._consent is None else self._consent.decision

    @property
    def granted(self) -> bool:
        """``consent.granted``, without a decision to build in the default mode."""
        return self._consent is None or self._consent.decision.granted

    def set_consent(self, granted: bool) -> bool:
        """grant_consent() / revoke_consent(); False when the mode needs no consent."""
        if self._consent is None or not self._consent.record(granted):
            return False
        self._resolution = None
        return True

    def ask_consent_again(self) -> None:
        """Forget the consent callable's answer: its source (a framework's request) is ready now."""
        if self._consent is not None and self._consent.ask_again():
            self._resolution = None

    # -- who the request is ----------------------------------------------------

    @property
    def resolution(self) -> Resolution:
        if self._resolution is None:
            self._resolution = self._resolve()
        return self._resolution

    def _resolve(self) -> Resolution:
        if not self.granted:
            # Without consent: one random id per request, never stored or linked,
            # and not the one a grant later in the request writes to the cookie.
            if self._ephemeral is None:
                self._ephemeral = new_anonymous_id()
            return Resolution(Identity(self._ephemeral, consented=False), Transition.NONE)
        settings = self.engine.settings
        return resolve(
            self._verified,
            self._reported if self._explicit is None else self._explicit,
            now=int(time.time()),
            user_hash=self.engine.codec.user_hash,
            max_age=settings.cookie_max_age,
            reset_on_logout=settings.reset_on_logout,
            new_id=self._mint,
            offered=self._browser_id if settings.adopt_browser_id else None,
            left=self._left,
            keys=len(settings.secrets),
        )

    def _browser_id(self) -> str | None:
        """posthog-js's own distinct id: its X-POSTHOG-DISTINCT-ID header, else its cookie's."""
        request = self.request
        name = self.engine.persistence_cookie
        if request.distinct_header:
            # posthog-js's cookie saying it identified a user: the header is that
            # user's id (a UUIDv7 for some apps), never an anonymous visitor's.
            # (A single-page app on another site sends no such cookie: one substring test.)
            if (
                name is not None
                and name in request.cookie_header
                and identified_in_cookie(request.cookie_header, name)
            ):
                return None
            return request.distinct_header
        return None if name is None else distinct_id_from_cookie(request.cookie_header, name)

    def _mint(self) -> str:
        # One new id per request, however many times the request is re-resolved.
        if self._minted is None:
            self._minted = new_anonymous_id()
        return self._minted

    @property
    def identity(self) -> Identity:
        identity = self.resolution.identity
        if self.flags is None:
            return identity
        # The resolved identity, with a view of the request's flags for its id.
        cached = self._identity
        if cached is None or cached[0] is not identity:
            flags = self.flags.bound(identity.distinct_id)
            cached = self._identity = (identity, replace(identity, flags=flags))
        return cached[1]

    def personless(self) -> bool:
        """Should this request's server captures skip person processing?"""
        identity = self.resolution.identity
        if not identity.consented:
            return True
        if self.engine.settings.person_profiles != "identified_only" or identity.is_identified:
            return False
        # A remembered but unreported user: their anonymous id's events belong to
        # their person only if it was linked into them (a login); one minted for a
        # user already signed in (first visit, account switch) never was, and
        # processing it would make a stray person.
        if not identity.signed_in:
            return True
        state = self.resolution.cookie or (self._verified.state if self._verified else None)
        return not (state is not None and state.linked)

    def event_context(self) -> tuple[str | None, dict[str, str]]:
        """The browser session and the request properties server events carry.

        Only with consent: without it nothing of the browser's is read or sent.
        """
        if not self.granted:
            return None, {}
        return self.browser_session(), self.request_properties()

    def browser_session(self) -> str | None:
        """posthog-js's session id: its X-POSTHOG-SESSION-ID header, else its cookie's."""
        request, engine = self.request, self.engine
        session = valid_uuid(request.session_header) if request.session_header else None
        name = engine.persistence_cookie
        # Most requests carry no posthog-js cookie: one substring test settles them.
        if session is None and name is not None and name in request.cookie_header:
            session = session_from_cookie(request.cookie_header, name)
        return session

    def request_properties(self) -> dict[str, str]:
        """The request's properties for its events, built on first use (most
        requests capture nothing); callers must not change the dict."""
        properties = self._properties
        if properties is None:
            request = self.request
            ip = client_ip(
                request.peer, request.forwarded_for, self.engine.settings.trusted_proxies
            )
            properties = request_properties(
                request.method,
                request.scheme,
                request.host,
                request.url_path or request.path,
                request.path,
                request.user_agent,
                ip,
            )
            window = valid_uuid(request.window_header) if request.window_header else None
            if window is not None:
                properties["$window_id"] = window
            self._properties = properties
        return properties

    # -- the response ------------------------------------------------------------

    def flags_pending(self, status: int, headers: list[tuple[str, str]]) -> bool:
        """Would `respond` wait on the network for flags (remote, not evaluated yet)?

        The ASGI adapter evaluates them in a thread first, off the event loop.
        """
        return (
            self.flags is not None
            and self.flags.pending(self.resolution.identity.distinct_id)
            and self.engine.snippet is not None
            and self.granted
            and may_inject(self.request.method, status, headers)
            and not shared_cacheable(headers)
        )

    def leaves_alone(self, content_type: str | None) -> bool:
        """At response start: will `respond` leave this response as the app made
        it, whatever its headers but Content-Type (the last one, None without)?

        True when there is no cookie to write, no link to send and no page to
        inject (only ``text/html`` gets the snippet): the common API response of
        a returning visitor, which an adapter may then send without translating
        its headers for `respond`. False means: call `respond`.
        """
        try:
            resolution = self.resolution
        except Exception:
            return False  # `respond` logs it, and leaves the response untouched
        if (
            resolution.cookie is not None
            or resolution.link is not None
            or self._consent is not None
        ):
            return False
        return (
            self.engine.snippet is None
            or content_type is None
            # The media type as `may_inject` reads it: before any parameters, lower-cased.
            or content_type.split(";", 1)[0].strip().lower() != "text/html"
        )

    def respond(self, status: int, headers: list[tuple[str, str]]) -> ResponsePlan:
        """At response start: send the link once, and plan the response.

        A page a shared cache may serve to others gets no Set-Cookie and a
        snippet without identity. A later call (a WSGI error page after a failed
        response) plans again without sending the link twice.
        """
        try:
            resolution = self.resolution
            if not self._responded:
                self._responded = True
                if resolution.link is not None:
                    self._send_link(resolution)
            # A returning visitor's common case writes no cookie: no call for it.
            added: tuple[tuple[str, str], ...] = (
                ()
                if resolution.cookie is None and self._consent is None
                else self._cookies(resolution)
            )
            snippet = self.engine.snippet
            if snippet is not None and may_inject(self.request.method, status, headers):
                shared = shared_cacheable(headers)
                rendered = self._snippet(snippet, headers, shared)
                body = BodyRewrite(rendered, self.engine.settings.inject_lookahead)
                return ResponsePlan(() if shared else added, body)
            if not added or shared_cacheable(headers):
                return UNTOUCHED
            return ResponsePlan(added, None)
        except Exception:
            logger.exception(
                "posthog_identity: finishing the response failed; it is sent untouched"
            )
            return UNTOUCHED

    def _send_link(self, resolution: Resolution) -> None:
        link, client = resolution.link, self.engine.client
        if link is None or client is None or not self.engine.links.first_time(link):
            return
        try:
            send_link(client, link)
        except Exception:
            logger.exception("posthog_identity: sending the login link failed")

    def _cookies(self, resolution: Resolution) -> tuple[tuple[str, str], ...]:
        """Set-Cookie for the identity cookie (written, or deleted without consent)
        and for a consent decision the app recorded in this request."""
        engine, secure = self.engine, self._secure()
        added = []
        if resolution.cookie is not None:
            value = engine.codec.dumps(resolution.cookie)
            added.append(("Set-Cookie", engine.cookies.identity(value, secure=secure)))
        elif self._forgets_cookie():
            added.append(("Set-Cookie", engine.cookies.delete_identity(secure=secure)))
        if self._consent is not None and self._consent.explicit is not None:
            line = engine.cookies.consent(self._consent.explicit, secure=secure)
            added.append(("Set-Cookie", line))
        return tuple(added)

    def _secure(self) -> bool:
        secure = self.engine.settings.secure_cookie
        return self.request.scheme in ("https", "wss") if secure is None else secure

    def _forgets_cookie(self) -> bool:
        """No consent (known to be missing, not unknown) and the browser sent our cookie."""
        state = self.consent.state
        if state is ConsentState.GRANTED or state is ConsentState.UNKNOWN:
            return False
        return self.engine.settings.cookie_name in all_cookies(self.request.cookie_header)

    def _snippet(self, snippet: Snippet, headers: list[tuple[str, str]], shared: bool) -> bytes:
        """The page's snippet; a page a shared cache may serve to others carries no identity."""
        consent = self.consent.state
        if shared:
            return snippet.render(None, csp_nonce(headers), None, consent)
        identity = self.identity
        flags = None
        if self.flags is not None and consent is ConsentState.GRANTED:
            flags = self.flags.current(identity.distinct_id)
        return snippet.render(identity, csp_nonce(headers), flags, consent)


# Apart from `Exchange.__init__`: the locals a closure captures become cells, which
# every request would pay for, though only these modes build the closures.
def _request_consent(engine: Engine, request: RequestInfo, native: object) -> RequestConsent:
    hook = engine.consent_hook
    return RequestConsent(
        engine.settings,
        lambda: all_cookies(request.cookie_header),
        request.sec_gpc,
        request.dnt,
        None if hook is None else asker(hook, native, engine.warn_once),
    )


def _request_flags(engine: Engine, flags: FlagSource, native: object) -> RequestFlags:
    context = engine.flag_context
    return RequestFlags(
        flags, None if context is None else lambda: context(native), engine.warn_once
    )
