"""Reading an ASGI scope: where the request is, and what the core needs of it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .exchange import RequestInfo

__all__ = [
    "ASGIApp",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "header",
    "mount_path",
    "request_info",
    "vouch",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def mount_path(scope: Scope) -> str:
    """The path below the app's mount point, as the app routes it."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    # Starlette and recent servers include the mount point in `path`; it ends
    # at a segment boundary (root_path "/app" is not the start of "/apple").
    if root and path.startswith(root):
        rest = path[len(root) :]
        if not rest or rest[0] == "/":
            return rest or "/"
    return path


# Request headers the core reads, by name -> their field in `RequestInfo`.
_FIELDS = {
    b"cookie": "cookie_header",
    b"sec-gpc": "sec_gpc",
    b"dnt": "dnt",
    b"host": "host",
    b"user-agent": "user_agent",
    b"x-forwarded-for": "forwarded_for",
    b"x-posthog-session-id": "session_header",
    b"x-posthog-window-id": "window_header",
    b"x-posthog-distinct-id": "distinct_header",
}
_DISTINCT_ID = b"x-posthog-distinct-id"


def header(scope: Scope, name: str) -> str | None:
    """The first value of request header `name` (lower case), or None."""
    wanted = name.encode("latin-1")
    for key, value in scope.get("headers", ()):
        if key == wanted or key.lower() == wanted:
            return str(value.decode("latin-1"))
    return None


def request_info(scope: Scope, path: str) -> tuple[RequestInfo, bool]:
    """The request, and whether it carries X-POSTHOG-DISTINCT-ID."""
    found: dict[str, str] = {}
    for key, value in scope.get("headers", ()):
        field = _FIELDS.get(key)
        if field is None:
            # Servers send lower-case names; a hand-built scope may not.
            if key.islower():
                continue
            field = _FIELDS.get(key.lower())
            if field is None:
                continue
        if field not in found:
            found[field] = value.decode("latin-1")
        elif field == "cookie_header":  # one Cookie header per cookie (HTTP/2)
            found[field] += "; " + value.decode("latin-1")
    get = found.get
    host = get("host")
    if host is None:
        host = ""
        server = scope.get("server")
        if server:
            default = server[1] in (None, 443 if scope.get("scheme") == "https" else 80)
            host = server[0] if default else f"{server[0]}:{server[1]}"
    client = scope.get("client")
    distinct = get("distinct_header")
    request = RequestInfo(
        scope.get("method", "GET"),
        scope.get("scheme", "http"),
        path,
        get("cookie_header", ""),
        get("sec_gpc", ""),
        get("dnt", ""),
        host,
        scope.get("path", ""),
        get("user_agent", ""),
        client[0] if client else "",
        get("forwarded_for", ""),
        get("session_header", ""),
        get("window_header", ""),
        distinct or "",
    )
    return request, distinct is not None


def vouch(scope: Scope, distinct_id: str) -> None:
    """Replace X-POSTHOG-DISTINCT-ID with the verified distinct id, so that a
    middleware inside ours which trusts the header (posthog's own) agrees."""
    try:
        value = distinct_id.encode("latin-1")
    except UnicodeEncodeError:
        value = b""  # not representable in a header: the header goes
    headers = [(k, v) for k, v in scope.get("headers", ()) if k.lower() != _DISTINCT_ID]
    if value:
        headers.append((_DISTINCT_ID, value))
    scope["headers"] = headers
