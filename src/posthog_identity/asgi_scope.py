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


# Request headers the core reads, by name -> their place in `request_info`'s list.
_FIELDS = {
    b"cookie": 0,
    b"sec-gpc": 1,
    b"dnt": 2,
    b"host": 3,
    b"user-agent": 4,
    b"x-forwarded-for": 5,
    b"x-posthog-session-id": 6,
    b"x-posthog-window-id": 7,
    b"x-posthog-distinct-id": 8,
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
    found: list[str | None] = [None] * len(_FIELDS)  # the first value of each
    for key, value in scope.get("headers", ()):
        at = _FIELDS.get(key)
        if at is None:
            # Servers send lower-case names; a hand-built scope may not.
            if key.islower():
                continue
            at = _FIELDS.get(key.lower())
            if at is None:
                continue
        if found[at] is None:
            found[at] = value.decode("latin-1")
        elif at == 0:  # one Cookie header per cookie (HTTP/2)
            found[0] = f"{found[0]}; {value.decode('latin-1')}"
    cookie, gpc, dnt, host, agent, forwarded, session, window, distinct = found
    if host is None:
        host = ""
        server = scope.get("server")
        if server:
            default = server[1] in (None, 443 if scope.get("scheme") == "https" else 80)
            host = server[0] if default else f"{server[0]}:{server[1]}"
    client = scope.get("client")
    request = RequestInfo(
        scope.get("method", "GET"),
        scope.get("scheme", "http"),
        path,
        cookie or "",
        gpc or "",
        dnt or "",
        host,
        scope.get("path", ""),
        agent or "",
        client[0] if client else "",
        forwarded or "",
        session or "",
        window or "",
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
    raw = scope.get("headers", ())
    if [v for k, v in raw if k.lower() == _DISTINCT_ID] == [value]:
        return  # it says the verified id already (posthog-js's own, adopted)
    headers = [(k, v) for k, v in raw if k.lower() != _DISTINCT_ID]
    if value:
        headers.append((_DISTINCT_ID, value))
    scope["headers"] = headers
