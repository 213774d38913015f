"""Streaming HTML injection over bytes chunks; knows nothing of WSGI or ASGI.

The snippet goes immediately before the first ``</head>`` or, when ``<body``
comes first, before ``<body``; only the first `lookahead` bytes are searched, so
the result never depends on how the body was split into chunks, and memory is
O(lookahead) beyond the chunk in hand.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from werkzeug.http import parse_options_header

__all__ = ["DEFAULT_LOOKAHEAD", "MARKER", "HtmlInjector", "grown_length", "inject", "may_inject"]

DEFAULT_LOOKAHEAD = 64 * 1024
#: Attribute carried by our script tag; a page that has it is not injected twice.
MARKER = b"data-posthog-identity"

# The closing tag's name ends at whitespace or '>' (so `</header>` never matches).
_INSERTION = re.compile(rb"</head[\s>]|<body[\s>/]", re.IGNORECASE)
# Bytes kept from the previous scan so a tag split across chunks is still found.
_OVERLAP = max(len(b"</head>"), len(MARKER)) - 1
_NO_BODY = frozenset({204, 205, 206, 304})


def may_inject(method: str, status: int, headers: Iterable[tuple[str, str]]) -> bool:
    """DESIGN.md's skip rules on the request method and the response head."""
    if method.upper() == "HEAD" or status < 200 or 300 <= status < 400 or status in _NO_BODY:
        return False
    media_type = encoding = disposition = ""
    lengths: set[str] = set()
    for name, value in headers:
        lowered = name.lower()
        if lowered == "content-length":
            lengths.add(value.strip())
        elif lowered == "content-type":
            media_type = parse_options_header(value)[0].lower()
        elif lowered == "content-encoding":
            encoding = value.strip().lower()
        elif lowered == "content-disposition":
            disposition = parse_options_header(value)[0].lower()
    # A Content-Length we could not correct is left alone, with its body.
    only = next(iter(lengths), "")
    valid_length = not lengths or (len(lengths) == 1 and only.isascii() and only.isdigit())
    return (
        media_type == "text/html"
        and encoding in ("", "identity")
        and disposition != "attachment"
        and valid_length
    )


def grown_length(value: str, injector: HtmlInjector) -> str:
    """A Content-Length value corrected for what the injector added."""
    return str(int(value) + len(injector.snippet)) if injector.injected else value


class HtmlInjector:
    """Feed body chunks in, get bytes out; holds bytes only until it has decided.

    Until the insertion point is found (or the look-ahead is spent, or the body
    ends) `feed` returns ``b""`` and keeps the bytes; afterwards everything
    passes straight through. `decided` tells an adapter when it may send the
    response head, and `injected` whether the length grew by ``len(snippet)``.
    """

    def __init__(self, snippet: bytes, lookahead: int = DEFAULT_LOOKAHEAD) -> None:
        self.snippet = snippet
        self.lookahead = lookahead
        self.decided = False
        self.injected = False
        self._held = bytearray()
        self._scanned = 0

    def feed(self, chunk: bytes) -> bytes:
        if self.decided:
            return chunk
        data: bytes | bytearray = chunk
        if self._held:
            self._held += chunk
            data = self._held
        window_end = min(len(data), self.lookahead)
        match = _INSERTION.search(data, max(0, self._scanned - _OVERLAP), window_end)
        if match is not None:
            return self._decide(data, match.start())
        if len(data) >= self.lookahead:
            return self._decide(data, None)
        self._scanned = window_end
        if data is chunk:
            # Only now copied: a chunk that decides on its own is never held.
            self._held = bytearray(chunk)
        return b""

    def finish(self) -> bytes:
        """The body ended: release whatever is still held, untouched."""
        return b"" if self.decided else self._decide(self._held, None)

    def _decide(self, data: bytes | bytearray, position: int | None) -> bytes:
        self.decided = True
        self._held = bytearray()
        if position is None or MARKER in data[:position]:
            return bytes(data)
        self.injected = True
        view = memoryview(data)
        return b"".join((view[:position], self.snippet, view[position:]))


def inject(body: bytes, snippet: bytes, lookahead: int = DEFAULT_LOOKAHEAD) -> bytes:
    """One-shot form of `HtmlInjector`: the same result as any chunked feed."""
    injector = HtmlInjector(snippet, lookahead)
    return injector.feed(body) + injector.finish()
