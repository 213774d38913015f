"""The browser snippet: loads posthog-js async and puts it on the request's identity."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

from .consent import ConsentState, storage_prefixes
from .hosts import assets_host

if TYPE_CHECKING:
    from .flags import Flags
    from .identity import Identity
    from .settings import Settings

__all__ = ["NO_CONSENT_OPTIONS", "Snippet", "csp_nonce", "default_script_url", "script_json"]

#: posthog-js init options for a page without consent. Memory persistence is
#: what keeps posthog-js 1.449.2 from writing cookies, localStorage or
#: sessionStorage *and* from reading an id persisted earlier (seen in Chromium:
#: `disable_persistence` still reads it; `cookieless_mode` needs PostHog's
#: server-side hashing). The features that store state of their own (surveys,
#: product tours, conversations) or record the visitor (replay) stay off, and
#: the site's own requests carry no session headers.
NO_CONSENT_OPTIONS: dict[str, Any] = {
    "persistence": "memory",
    "disable_session_recording": True,
    "disable_surveys": True,
    "disable_product_tours": True,
    "disable_conversations": True,
    "tracing_headers": [],
}

# posthog-js adds its session headers (X-POSTHOG-SESSION-ID, ...) to fetch/XHR
# calls to the hosts `tracing_headers` lists: by default the page's own, so
# server events made while answering them join the browser's session.
# A small queue stands in for posthog-js until the real script (loaded async,
# never blocking rendering) replays the recorded calls. posthog-js's array.js
# reads `_i` (init calls) and the pushed `[method, ...args]` arrays.
# `o.consent` is set only without consent (or, on a shared-cacheable page, for
# the browser to decide from the consent cookie, GPC and DNT): then posthog-js
# gets no id and NO_CONSENT_OPTIONS, is opted out after a refusal, and `wipe`
# first removes what it stored earlier (web storage, and cookies on the host
# and every parent domain).
# The loader itself is snippet.js: a function of (window, document, options),
# valid JavaScript on its own. Its lines are joined without line breaks, so a
# page carries it on one line; read once, at import. The lines between
# `/*consent*/` and `/*end consent*/` (the consent decision, the consent cookie's
# reader, the wipe of stored state: a third of it) go only to the pages of a
# consent mode; in the default mode no page has an `o.consent` to run them for.
_CONSENT_START, _CONSENT_END = "/*consent*/", "/*end consent*/"


def _loader(source: str, *, consent: bool) -> str:
    kept, inside = [], False
    for line in source.splitlines():
        if line in (_CONSENT_START, _CONSENT_END):
            inside = line == _CONSENT_START
        elif consent or not inside:
            kept.append(line)
    return "".join(kept)


_LOADER_SOURCE = (resources.files("posthog_identity") / "snippet.js").read_text(encoding="utf-8")
_LOADER_FUNCTION = {consent: _loader(_LOADER_SOURCE, consent=consent) for consent in (False, True)}

# The methods posthog-js 1.449's own loader queues (dist/loader.js) before the
# library arrives; array.js replays them in order.
_METHODS = (
    "addExceptionStep alias calculateEventProperties canRenderSurvey "
    "canRenderSurveyAsync cancelPendingSurvey capture captureException captureLog "
    "captureTraceFeedback captureTraceMetric clearIdentity "
    "clear_opt_in_out_capturing createPersonProfile debug displaySurvey "
    "getActiveMatchingSurveys getAllFeatureFlags getEarlyAccessFeatures getExtension "
    "getFeatureFlag getFeatureFlagPayload getFeatureFlagResult getGroups "
    "getPageViewId getSessionProperty getSurveys get_distinct_id "
    "get_explicit_consent_status get_property get_session_id get_session_replay_url "
    "group has_opted_in_capturing has_opted_out_capturing identify isFeatureEnabled "
    "is_capturing loadToolbar on onActiveMatchingSurveysChanged onFeatureFlags "
    "onSessionId onSurveysLoaded opt_in_capturing opt_out_capturing people.set "
    "people.set_once register register_for_session register_once reloadFeatureFlags "
    "renderSurvey reset resetGroupPropertiesForFlags resetGroups "
    "resetPersonPropertiesForFlags sessionRecordingStarted "
    "setGroupPropertiesForFlags setIdentity setInternalOrTestUser "
    "setPersonProperties setPersonPropertiesForFlags set_config shutdown "
    "startExceptionAutocapture startSessionRecording stopExceptionAutocapture "
    "stopSessionRecording unregister unregister_for_session unsetPersonProperties "
    "updateEarlyAccessFeatureEnrollment updateFlags"
)

_NONCE = re.compile(r"'nonce-([A-Za-z0-9+/_=-]+)'")
_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_UNSAFE = re.compile("[<>&\u2028\u2029]")


# Built once: json.dumps with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def script_json(value: Any) -> str:
    """JSON that is safe inside a <script> element: no tag, entity or line break escapes."""
    return _UNSAFE.sub(_escape, _ENCODER.encode(value))


def _escape(match: re.Match[str]) -> str:
    return _ESCAPES[match.group()]


def default_script_url(host: str) -> str:
    """Where posthog-js lives for an ingestion host: PostHog's assets CDN, else the host."""
    return f"{assets_host(host)}/static/array.js"


def csp_nonce(headers: Iterable[tuple[str, str]]) -> str | None:
    """The nonce allowed for scripts by the response's Content-Security-Policy, if any."""
    for name, value in headers:
        if name.lower() != "content-security-policy":
            continue
        directives: dict[str, str] = {}
        for directive in value.split(";"):
            key, _, rest = directive.strip().partition(" ")
            directives.setdefault(key.lower(), rest)
        # script-src-elem governs <script> elements; script-src, then default-src, back it.
        for key in ("script-src-elem", "script-src", "default-src"):
            if key in directives:
                match = _NONCE.search(directives[key])
                if match:
                    return match.group(1)
                break
    return None


class Snippet:
    """Renders our <script> for one response; everything fixed is computed once.

    :param options: extra posthog-js ``init`` options (JSON-serializable).
    :param consent: the settings' consent mode; in ``opt-in`` and ``opt-out``
        a page without consent starts posthog-js with `NO_CONSENT_OPTIONS`,
        and a shared-cacheable page decides in the browser.
    """

    def __init__(
        self,
        api_key: str,
        api_host: str,
        script_url: str | None = None,
        options: Mapping[str, Any] | None = None,
        consent: Settings | None = None,
    ) -> None:
        self.api_key = api_key
        self.script_url = script_url or default_script_url(api_host)
        self.config: dict[str, Any] = {"api_host": api_host, **(options or {})}
        fixed = script_json(
            {"token": api_key, "src": self.script_url, "methods": _METHODS, "config": self.config}
        )
        asks_consent = consent is not None and consent.consent != "not-required"
        head, tail = _LOADER_FUNCTION[asks_consent] + "(window,document,", ");"
        # Everything that does not depend on the request is bytes made here: a
        # page only adds its values, each made safe for a script on its own (the
        # escapes are per character, so the whole is exactly script_json's).
        # The per-request object's keys, in order: nonce, flags, identity, consent.
        self._head = (">" + head + fixed[:-1] + ',"nonce":').encode()
        self._tail = ("}" + tail + "</script>").encode()
        # Without consent: posthog-js keeps nothing (per consent state); on a
        # shared-cacheable page the browser decides (static, the same for every
        # visitor, so a shared cache may keep it).
        self._without_consent: dict[ConsentState, bytes] | None = None
        self._in_browser = b""
        if asks_consent:
            assert consent is not None
            no_consent = {
                "options": NO_CONSENT_OPTIONS,
                "prefixes": storage_prefixes(api_key, self.config),
            }
            self._without_consent = {
                state: _member(
                    "consent",
                    {
                        **no_consent,
                        "state": state.value,
                        "clear": state is not ConsentState.UNKNOWN,
                    },
                )
                for state in ConsentState
                if state is not ConsentState.GRANTED
            }
            self._in_browser = _member(
                "consent",
                {
                    **no_consent,
                    "state": "browser",
                    "cookie": consent.consent_cookie,
                    "granted": consent.consent_granted,
                    "denied": consent.consent_denied,
                    "gpc": consent.respect_gpc,
                    "dnt": consent.respect_dnt,
                    "fallback": "pending" if consent.consent == "opt-in" else "granted",
                },
            )

    def render(
        self,
        identity: Identity | None,
        nonce: str | None = None,
        flags: Flags | None = None,
        consent: ConsentState = ConsentState.GRANTED,
    ) -> bytes:
        """The snippet for `identity`; None (a shared-cacheable page) carries no id.

        `flags` are bootstrapped so posthog-js has them before it asks /flags.
        Without consent the page carries neither: posthog-js keeps nothing,
        captures nothing after a refusal, and clears what it stored before
        (not when the decision is unknown: that deletes nothing).
        """
        page_consent = b""
        if self._without_consent is not None:
            if identity is None:
                page_consent = self._in_browser
            elif consent is not ConsentState.GRANTED:
                identity, flags = None, None
                page_consent = self._without_consent[consent]
        if nonce is None:
            nonce_attribute, nonce_value = b"", b"null"
        else:
            nonce_attribute = f' nonce="{_attribute(nonce)}"'.encode()
            nonce_value = _string(nonce)
        return b"".join(
            (
                _OPEN,
                nonce_attribute,
                self._head,
                nonce_value,
                b',"flags":',
                b"null" if flags is None else _flags(flags),
                b',"identity":',
                b"null" if identity is None else _identity(identity),
                page_consent,
                self._tail,
            )
        )


def _string(value: str) -> bytes:
    return script_json(value).encode()


def _identity(identity: Identity) -> bytes:
    user = identity.user_id
    return b"".join(
        (
            b'{"anonymous":',
            _string(identity.anonymous_id),
            b',"user":',
            b"null" if user is None else _string(user),
            b',"signedIn":true}' if identity.signed_in else b',"signedIn":false}',
        )
    )


def _flags(flags: Flags) -> bytes:
    return script_json({"values": dict(flags.values), "payloads": dict(flags.payloads)}).encode()


def _member(key: str, value: Any) -> bytes:
    """``,"key":value`` for the per-request object."""
    return b"," + script_json(key).encode() + b":" + script_json(value).encode()


_OPEN = b"<script data-posthog-identity"


def _attribute(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
