"""Streaming HTML injection over bytes chunks; knows nothing of WSGI or ASGI.

The snippet goes immediately before the first ``</head>`` or, when ``<body``
comes first, before ``<body``; only the first `lookahead` bytes are searched, so
the result never depends on how the body was split into chunks, and memory is
O(lookahead) beyond the chunk in hand.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["DEFAULT_LOOKAHEAD", "MARKER", "HtmlInjector", "inject", "may_inject"]

DEFAULT_LOOKAHEAD = 64 * 1024
#: Attribute carried by our script tag; a page that has it is not injected twice.
MARKER = b"data-posthog-identity"

# The closing tag's name ends at whitespace or '>' (so `</header>` never matches).
# Every branch starts with "<", which keeps the regex engine's fast scan for it.
_INSERTION = re.compile(rb"</head[\s>]|<body[\s>/]", re.IGNORECASE)
# Bytes kept from the previous scan so a tag split across chunks is still found.
_OVERLAP = max(len(b"</head>"), len(MARKER)) - 1
_NO_BODY = frozenset({204, 205, 206, 304})
#: A chunk up to this size leaves with the snippet inside it, as one piece: each
#: piece is a write (or an ASGI message) of its own, which costs a server more
#: than copying a page-sized chunk. A larger one is cut around the snippet, so
#: the snippet is not copied along with it and memory stays the look-ahead plus
#: the chunk in hand.
_JOIN_LIMIT = 32 * 1024


def may_inject(method: str, status: int, headers: Iterable[tuple[str, str]]) -> bool:
    """May this response's body get the snippet? Not for HEAD, a status without a
    page (1xx, 204, 205, 206, 304, redirects), anything but ``text/html``, a
    compressed body, an attachment, or a Content-Length we could not correct."""
    if method.upper() == "HEAD" or status < 200 or 300 <= status < 400 or status in _NO_BODY:
        return False
    media_type = encoding = disposition = ""
    length: str | None = None
    valid_length = True
    for name, value in headers:
        lowered = name.lower()
        if lowered == "content-type":
            media_type = _token(value)
        elif lowered == "content-length":
            # A Content-Length we could not correct is left alone, with its body.
            value = value.strip()
            valid_length = valid_length and (length is None or length == value)
            length = value
        elif lowered == "content-encoding":
            encoding = value.strip().lower()
        elif lowered == "content-disposition":
            disposition = _token(value)
    return (
        media_type == "text/html"
        and encoding in ("", "identity")
        and disposition != "attachment"
        and valid_length
        and (length is None or (length.isascii() and length.isdigit()))
    )


def _token(value: str) -> str:
    """The first token of a header with parameters (`text/html; charset=...`), lower-cased."""
    return value.split(";", 1)[0].strip().lower()


class HtmlInjector:
    """Feed body chunks in, get the pieces to send out; holds chunks only until it has decided.

    Until the insertion point is found (or the look-ahead is spent, or the body
    ends) `feed` returns no pieces and keeps the chunks it was given, as they
    are: memory is the look-ahead plus the chunk that holds the insertion
    point, which goes out with the snippet inside it (one piece up to
    `_JOIN_LIMIT`, else cut around it). Held chunks are otherwise handed back
    uncopied.
    Afterwards every chunk passes straight through.
    `decided` tells an adapter when it may send the response head, and
    `injected` whether the length grew by ``len(snippet)``.
    """

    __slots__ = ("_held", "_size", "_tail", "decided", "injected", "lookahead", "snippet")

    def __init__(self, snippet: bytes, lookahead: int = DEFAULT_LOOKAHEAD) -> None:
        self.snippet = snippet
        self.lookahead = lookahead
        self.decided = False
        self.injected = False
        self._held: list[bytes] = []
        self._size = 0  # bytes held
        self._tail = b""  # the last held bytes, where a tag split across chunks begins

    def feed(self, chunk: bytes) -> list[bytes]:
        """The pieces to send for this chunk, in order (none while still deciding)."""
        if self.decided:
            return [chunk] if chunk else []
        start, tail = self._size, self._tail
        limit = self.lookahead - start  # bytes left to search (an end past the chunk's is its end)
        position: int | None = None
        if tail:
            # A tag that began in earlier chunks ends within this one's first bytes.
            boundary = tail + chunk[:_OVERLAP]
            match = _INSERTION.search(boundary, 0, min(len(boundary), limit + len(tail)))
            if match is not None and match.start() < len(tail):
                position = start - len(tail) + match.start()
        if position is None:
            match = _INSERTION.search(chunk, 0, limit)
            if match is not None:
                position = start + match.start()
        if chunk:
            self._held.append(chunk)
            self._size = start + len(chunk)
        if position is not None:
            return self._decide(position)
        if self._size >= self.lookahead:
            return self._decide(None)
        self._tail = (tail + chunk[-_OVERLAP:])[-_OVERLAP:]
        return []

    def finish(self) -> list[bytes]:
        """The body ended: the pieces still held, untouched."""
        return [] if self.decided else self._decide(None)

    def _decide(self, position: int | None) -> list[bytes]:
        self.decided = True
        held, self._held, self._tail = self._held, [], b""
        if position is None:
            return held
        if len(held) == 1:  # the usual page: its head in its first chunk
            chunk = held[0]
            if chunk.find(MARKER, 0, position) != -1:
                return held
            self.injected = True
            return self._place(chunk, position)
        if _marked(held, position):
            return held
        self.injected = True
        index = offset = 0
        while offset + len(held[index]) <= position:
            offset += len(held[index])
            index += 1
        held[index : index + 1] = self._place(held[index], position - offset)
        return held

    def _place(self, chunk: bytes, cut: int) -> list[bytes]:
        """`chunk` with the snippet at `cut`: one piece, or three for a large chunk."""
        if len(chunk) <= _JOIN_LIMIT:
            view = memoryview(chunk)
            return [b"".join((view[:cut], self.snippet, view[cut:]))]
        return [chunk[:cut], self.snippet, chunk[cut:]]


def _marked(held: list[bytes], position: int) -> bool:
    """Does our marker occur before `position` (the page already has our snippet)?

    The marker holds no "<", so one that starts before the insertion point ends there.
    """
    offset, before, edge = 0, b"", len(MARKER) - 1
    for chunk in held:
        if offset >= position:
            return False
        # One that began in earlier chunks fits in neither half of this window.
        if MARKER in before + chunk[:edge]:
            return True
        if chunk.find(MARKER, 0, position - offset) != -1:
            return True
        offset += len(chunk)
        before = (before + chunk[-edge:])[-edge:]  # the last bytes seen
    return False


def inject(body: bytes, snippet: bytes, lookahead: int = DEFAULT_LOOKAHEAD) -> bytes:
    """One-shot form of `HtmlInjector`: the same result as any chunked feed."""
    injector = HtmlInjector(snippet, lookahead)
    return b"".join(injector.feed(body) + injector.finish())
