"""The response side of an exchange, sans-IO: what to add to the head, and the body rewrite.

Both adapters drive the same objects: they append `ResponsePlan.headers`, and
for an HTML page hold the head until `BodyRewrite` has decided, then send it
with `BodyRewrite.headers` (the corrected Content-Length) and the pieces.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from werkzeug.http import parse_dict_header

from .html import HtmlInjector

__all__ = ["BodyRewrite", "ResponsePlan", "shared_cacheable"]


class BodyRewrite(HtmlInjector):
    """One HTML body on its way out: chunks in (`feed`, `finish`), pieces out, and
    the final Content-Length.

    While `holding`, the response head must not be sent (its Content-Length
    is not known yet) and `feed` may return no pieces; memory stays within
    the look-ahead. The injector itself, with no layer around it: an HTML
    page's every chunk goes through it.
    """

    __slots__ = ()

    @property
    def holding(self) -> bool:
        return not self.decided

    def headers(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The head to send once decided: Content-Length grown by the snippet, if injected."""
        if not self.injected:
            return headers
        grown, grown_headers = len(self.snippet), []
        for name, value in headers:  # a loop: cheaper than a comprehension's call
            if name.lower() == "content-length":
                value = str(int(value) + grown)
            grown_headers.append((name, value))
        return grown_headers

    def raw_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """`headers` for ASGI's byte-string pairs."""
        if not self.injected:
            return list(headers)
        grown, grown_headers = len(self.snippet), []
        for name, value in headers:
            if name.lower() == b"content-length":
                value = b"%d" % (int(value) + grown)
            grown_headers.append((name, value))
        return grown_headers


class ResponsePlan(NamedTuple):
    """What the exchange decided at response start."""

    headers: tuple[tuple[str, str], ...]  #: to append to the app's (Set-Cookie)
    body: BodyRewrite | None  #: None: the body passes through untouched


#: A response left as the app made it.
UNTOUCHED = ResponsePlan((), None)


def shared_cacheable(headers: Iterable[tuple[str, str]]) -> bool:
    """`Cache-Control: public` or `s-maxage`: a shared cache may serve it to others."""
    for name, value in headers:
        if name.lower() == "cache-control":
            directives = {key.lower() for key in parse_dict_header(value)}
            if "public" in directives or "s-maxage" in directives:
                return True
    return False
