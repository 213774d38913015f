"""The browser snippet: loads posthog-js async and puts it on the request's identity."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .flags import Flags
    from .identity import Identity

__all__ = ["Snippet", "csp_nonce", "default_script_url", "script_json"]

# A small queue stands in for posthog-js until the real script (loaded async,
# never blocking rendering) replays the recorded calls. posthog-js's array.js
# reads `_i` (init calls) and the pushed `[method, ...args]` arrays.
_LOADER = """\
(function(w,d,o){\
var ph=w.posthog=w.posthog||[];\
if(!ph.__SV){\
ph.__SV=1;ph._i=[];ph.people=ph.people||[];\
var stub=function(t,m){var p=m.split(".");if(p.length==2){t=t[p[0]];m=p[1];}\
t[m]=function(){t.push([m].concat(Array.prototype.slice.call(arguments,0)));};};\
var ms=o.methods.split(" ");for(var i=0;i<ms.length;i++){stub(ph,ms[i]);}\
ph.init=function(k,c,n){ph._i.push([k,c,n||"posthog"]);};\
var s=d.createElement("script");s.async=true;s.crossOrigin="anonymous";s.src=o.src;\
if(o.nonce){s.nonce=o.nonce;}\
(d.head||d.documentElement).appendChild(s);\
}\
var c=o.config,id=o.identity;\
if(o.nonce){c.prepare_external_dependency_script=c.prepare_external_dependency_stylesheet=\
function(e){e.nonce=o.nonce;return e;};}\
if(o.flags){c.bootstrap=c.bootstrap||{};c.bootstrap.featureFlags=o.flags.values;\
c.bootstrap.featureFlagPayloads=o.flags.payloads;}\
if(id){\
c.get_device_id=function(){return id.anonymous;};\
if(!id.user&&!id.signedIn){c.bootstrap=c.bootstrap||{};\
c.bootstrap.distinctID=id.anonymous;c.bootstrap.isIdentifiedID=false;}\
c.loaded=function(p){\
if(!id.user||p.get_distinct_id()===id.user){return;}\
if(p.get_property("$user_state")==="identified"){p.reset();}\
p.identify(id.user);};\
}\
ph.init(o.token,c);\
})(window,document,%s);"""

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


def script_json(value: Any) -> str:
    """JSON that is safe inside a <script> element: no tag, entity or line break escapes."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return _UNSAFE.sub(lambda m: _ESCAPES[m.group()], text)


def default_script_url(host: str) -> str:
    """Where posthog-js lives for an ingestion host: PostHog's assets CDN, else the host."""
    parts = urlsplit(host)
    hostname = parts.hostname or ""
    if hostname.endswith(".i.posthog.com"):
        region = hostname[: -len(".i.posthog.com")]
        return f"https://{region}-assets.i.posthog.com/static/array.js"
    if hostname in ("app.posthog.com", "us.posthog.com"):
        return "https://us-assets.i.posthog.com/static/array.js"
    if hostname == "eu.posthog.com":
        return "https://eu-assets.i.posthog.com/static/array.js"
    return f"{host.rstrip('/')}/static/array.js"


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
    """

    def __init__(
        self,
        api_key: str,
        api_host: str,
        script_url: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.api_key = api_key
        self.script_url = script_url or default_script_url(api_host)
        self.config: dict[str, Any] = {"api_host": api_host, **(options or {})}

    def render(
        self, identity: Identity | None, nonce: str | None = None, flags: Flags | None = None
    ) -> bytes:
        """The snippet for `identity`; None (a shared-cacheable page) carries no id.

        `flags` are bootstrapped so posthog-js has them before it asks /flags.
        """
        data: dict[str, Any] = {
            "token": self.api_key,
            "src": self.script_url,
            "nonce": nonce,
            "methods": _METHODS,
            "config": self.config,
            "flags": None
            if flags is None
            else {"values": dict(flags.values), "payloads": dict(flags.payloads)},
            "identity": None
            if identity is None
            else {
                "anonymous": identity.anonymous_id,
                "user": identity.user_id,
                "signedIn": identity.signed_in,
            },
        }
        nonce_attribute = "" if nonce is None else f' nonce="{_attribute(nonce)}"'
        script = _LOADER % script_json(data)
        return f"<script data-posthog-identity{nonce_attribute}>{script}</script>".encode()


def _attribute(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
