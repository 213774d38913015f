"""What the first-party proxy says back to the browser, whichever client forwarded.

The vocabulary both of the proxy's HTTP clients share (urllib3's under WSGI,
`upstream_async`'s under ASGI) and both adapters answer with: the reply, the
proxy's own short answers, the body bound, and the headers never returned.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from http import HTTPStatus
from typing import NamedTuple
from urllib.parse import urlsplit

__all__ = [
    "BAD_PATH",
    "BUSY",
    "CHUNK",
    "HOP_BY_HOP",
    "INCOMPLETE",
    "SILENT",
    "TOO_LARGE",
    "UNREACHABLE",
    "BodyIncomplete",
    "BodyTooLarge",
    "Reply",
    "busy_reply",
    "error_reply",
    "limited",
    "origin_of",
    "returned",
    "status_line",
]

# Hop-by-hop headers (RFC 9110 7.6.1) and what a proxy sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# What would touch the site rather than posthog-js (PostHog's own cookies), and what
# the app's server sets itself: a second Date or Server would contradict the first.
_NOT_RETURNED = HOP_BY_HOP | {"set-cookie", "set-cookie2", "date", "server"}
#: Bytes read at a time, either way: what a request in flight holds in hand.
CHUNK = 64 * 1024
#: Seconds posthog-js is told to wait after a 503 (it retries with its own backoff).
RETRY_AFTER = "1"

TOO_LARGE = "the request body is larger than POSTHOG_IDENTITY_PROXY_MAX_BODY\n"
BAD_PATH = "the path has a . or .. segment or an encoded /\n"
INCOMPLETE = "the request body ended early or stalled\n"
BUSY = "too many requests to PostHog in flight; retry shortly\n"
UNREACHABLE = "PostHog is unreachable\n"
SILENT = "PostHog did not answer in time\n"


class BodyTooLarge(Exception):
    """The request body crossed POSTHOG_IDENTITY_PROXY_MAX_BODY while it streamed."""


class BodyIncomplete(Exception):
    """The request body stopped before its end: the browser went away or fell silent.

    Not an OSError, on purpose: urllib3 would take a reset for the upstream's and
    wait for an answer; this one closes the upstream connection unfinished.
    """


class Reply(NamedTuple):
    """What goes back to the browser: status, headers, and the body's chunks.

    `body` is a generator: closing it early (the browser went away) closes the
    upstream connection instead of returning it to the pool half read.
    """

    status: int
    headers: list[tuple[str, str]]
    body: Generator[bytes, None, None]
    own: bool = False  #: the proxy's own answer (400, 408, 413, 502, 503, 504), not PostHog's


def error_reply(status: int, text: str, *extra: tuple[str, str]) -> Reply:
    """A short plain-text answer of the proxy's own (400, 408, 413, 502, 503, 504)."""
    body = text.encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    return Reply(status, [*headers, *extra], (piece for piece in (body,)), own=True)


def busy_reply() -> Reply:
    """503 for a request beyond the cap, sent before its body is read.

    The connection stays open: the server reads the unread body and drops it.
    Closing instead would make the kernel reset a connection whose upload is
    still arriving, and a client may lose the 503 with it.
    """
    return error_reply(503, BUSY, ("Retry-After", RETRY_AFTER))


def limited(chunks: Iterable[bytes], limit: int) -> Iterator[bytes]:
    """`chunks` as they come, until their total crosses `limit`: then `BodyTooLarge`."""
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        yield chunk


def returned(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """PostHog's answer headers the browser gets: no cookies, hop-by-hop, Date or Server."""
    return [(name, value) for name, value in headers if name.lower() not in _NOT_RETURNED]


def status_line(status: int) -> str:
    """``"200 OK"`` for WSGI's start_response."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of `url`: what the logs name, never a path or query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
