"""The browser's session and the request itself, as properties of server events.

posthog-js keeps its session id (a UUIDv7) in its persistence, the
``ph_<token>_posthog`` cookie (``$sesid``: [last activity, session id, start]),
and sends it on fetch/XHR as ``X-POSTHOG-SESSION-ID`` to the hosts its
``tracing_headers`` option lists. A server event that carries it lands in the
browser's session and replay. These values come from the client: they place
an event in a session, never decide whose it is, and anything malformed
simply means "no session". The same cookie holds posthog-js's own distinct id,
which the resolver may take for an anonymous visitor who has no cookie of ours.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = [
    "client_ip",
    "distinct_id_from_cookie",
    "identified_in_cookie",
    "persistence_cookie",
    "request_properties",
    "session_from_cookie",
    "valid_uuid",
]

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# What follows `"$sesid` in posthog-js's cookie: `":[<number or null>,"<uuid>"`,
# through encodeURIComponent (also matched undecoded, as a proxy may pass it).
_AFTER_SESID = re.compile(
    r"(?:%22|\")(?:%3A|:)(?:%5B|\[)[0-9a-zA-Z.]{0,20}(?:%2C|,)(?:%22|\")"
    r"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
    r"(?:%22|\")"
)
_BEFORE_SESID = ("%22%24", '"$')
# `"distinct_id":"<uuid>"` in posthog-js's cookie, encoded or not (`$anon_distinct_id`
# and the like do not match: the key must follow its opening quote).
_DISTINCT_ID = re.compile(
    r"(?:%22|\")distinct_id(?:%22|\")(?:%3A|:)(?:%22|\")"
    r"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
    r"(?:%22|\")"
)
# posthog-js marks a browser that called identify(): its distinct id is then a user's.
_IDENTIFIED = re.compile(
    r"(?:%22|\")(?:%24|\$)user_state(?:%22|\")(?:%3A|:)(?:%22|\")identified(?:%22|\")"
)
#: Longer cookie values are not searched (posthog-js's own stays well below).
MAX_PERSISTENCE_COOKIE = 8192


def valid_uuid(value: str) -> str | None:
    """`value` when it is a UUID in its canonical text form, else None."""
    return value if len(value) == 36 and _UUID.fullmatch(value) else None


def persistence_cookie(token: str, options: Mapping[str, object]) -> str:
    """The name of posthog-js's persistence cookie for this project.

    posthog-js spells ``+ / =`` of the token ``PL SL EQ``, or uses
    ``ph_<persistence_name>`` when that init option is set.
    """
    name = options.get("persistence_name")
    if isinstance(name, str) and name:
        return f"ph_{name}"
    sanitized = token.replace("+", "PL").replace("/", "SL").replace("=", "EQ")
    return f"ph_{sanitized}_posthog"


def session_from_cookie(cookie_header: str, name: str) -> str | None:
    """The session id in posthog-js's persistence cookie `name`, if it holds a valid one."""
    found = _cookie_value(cookie_header, name)
    return None if found is None else _session_in(cookie_header, *found)


def distinct_id_from_cookie(cookie_header: str, name: str) -> str | None:
    """The anonymous distinct id in posthog-js's persistence cookie `name`, if it
    holds one shaped like a UUID; None once posthog-js identified a user."""
    found = _cookie_value(cookie_header, name)
    if found is None:
        return None
    begin, end = found
    matched = _DISTINCT_ID.search(cookie_header, begin, end)
    if matched is None or _IDENTIFIED.search(cookie_header, begin, end):
        return None
    return matched.group(1)


def identified_in_cookie(cookie_header: str, name: str) -> bool:
    """Whether posthog-js's persistence cookie `name` says it identified a user
    (its `$user_state`): its distinct id, in the cookie or a header, is then a user's."""
    found = _cookie_value(cookie_header, name)
    return found is not None and _IDENTIFIED.search(cookie_header, *found) is not None


def _cookie_value(cookie_header: str, name: str) -> tuple[int, int] | None:
    """Where the value of cookie `name` starts and ends in the header; None when
    absent or longer than posthog-js's own ever is."""
    prefix = name + "="
    start = cookie_header.find(prefix)
    while start != -1:
        if start == 0 or cookie_header[start - 1] in "; \t":
            begin = start + len(prefix)
            end = cookie_header.find(";", begin)
            end = len(cookie_header) if end == -1 else end
            if end - begin > MAX_PERSISTENCE_COOKIE:
                return None
            return begin, end
        start = cookie_header.find(prefix, start + 1)
    return None


def _session_in(header: str, begin: int, end: int) -> str | None:
    # A plain search for the key first: it runs at C speed over the whole value.
    at = header.find("sesid", begin, end)
    while at != -1:
        if header.endswith(_BEFORE_SESID, begin, at):
            found = _AFTER_SESID.match(header, at + 5, end)
            if found is not None:
                return found.group(1).lower()
        at = header.find("sesid", at + 5, end)
    return None


def client_ip(peer: str, forwarded_for: str, trusted: int) -> str | None:
    """The client's address: the peer's, or X-Forwarded-For's as far as `trusted` hops allow.

    As werkzeug's ProxyFix counts: with N trusted proxies in front of the app,
    the N-th address from the right is the client; with fewer the header is
    not believed.
    """
    if trusted and forwarded_for:
        hops = [hop.strip() for hop in forwarded_for.split(",")]
        if len(hops) >= trusted and hops[-trusted]:
            return hops[-trusted][:64]
    return peer or None


def request_properties(
    method: str,
    scheme: str,
    host: str,
    url_path: str,
    path: str,
    user_agent: str,
    ip: str | None,
) -> dict[str, str]:
    """The request's properties, named as posthog-python's own middlewares name them.

    `url_path` is the whole path (mount point included) and `path` the one the
    app routes; the URL leaves out the query string, which often holds secrets.
    """
    properties = {"$request_method": method, "$request_path": path}
    if host:
        properties["$current_url"] = f"{scheme}://{host}{url_path}"
    if user_agent:
        properties["$user_agent"] = user_agent
    if ip:
        properties["$ip"] = ip
    return properties
