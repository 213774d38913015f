"""Pages and our snippet in them: a small page with a head (as the injection tests' apps
answer it), and the snippet read back out of a page: the script element, the options it
hands posthog-js (identity, config, flags, consent), where a real HTML5 parser puts it.
"""

from __future__ import annotations

import json
import re
from typing import Any
from xml.etree import ElementTree

import html5lib

#: A small page with a head, and the content type the apps answer it with.
PAGE = b"<!doctype html><html><head><title>t</title></head><body><h1>hi</h1></body></html>"
HTML = "text/html; charset=utf-8"

MARKER = b"data-posthog-identity"


SNIPPET = re.compile(rb"<script data-posthog-identity[^>]*>.*?</script>", re.DOTALL)


# The loader's last line: `})(window,document,{...});`, the object being its options.
OPTIONS = re.compile(rb"\}\)\(window,document,(\{.*\})\);</script>\Z", re.DOTALL)


def the_snippet(body: bytes) -> bytes:
    """Our one script element in `body`."""
    assert body.count(MARKER) == 1, f"{body.count(MARKER)} snippets"
    match = SNIPPET.search(body)
    assert match is not None
    return match.group()


def snippet_options(body: bytes) -> dict[str, Any]:
    """The JSON object the loader is called with."""
    match = OPTIONS.search(the_snippet(body))
    assert match is not None, "the snippet does not end with the loader call"
    options: dict[str, Any] = json.loads(match.group(1))
    return options


def html5_parent_of_snippet(body: bytes) -> str:
    """The tag of the element a real HTML5 parser puts our script in."""
    tree = html5lib.parse(body.decode("utf-8"), namespaceHTMLElements=False)
    scripts = tree.findall(".//script[@data-posthog-identity]")
    assert len(scripts) == 1, f"{len(scripts)} snippet elements after parsing"
    parents = {child: parent for parent in tree.iter() for child in parent}
    parent: ElementTree.Element = parents[scripts[0]]
    return str(parent.tag)
