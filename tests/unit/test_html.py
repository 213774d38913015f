"""The streaming injector: placement, skip rules, chunk-split invariance, bounded memory."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import html5lib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posthog_identity.html import DEFAULT_LOOKAHEAD, MARKER, HtmlInjector, inject, may_inject

SNIPPET = b"<script data-posthog-identity>init()</script>"


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        (
            b"<html><head><title>t</title></head><body>x</body></html>",
            b"<html><head><title>t</title>" + SNIPPET + b"</head><body>x</body></html>",
        ),
        (b"<HTML><HEAD></HEAD ><BODY>", b"<HTML><HEAD>" + SNIPPET + b"</HEAD ><BODY>"),
        (b"<head></head\n>", b"<head>" + SNIPPET + b"</head\n>"),
        (b"<html><body class=x>hi", b"<html>" + SNIPPET + b"<body class=x>hi"),
        (b"<body>a</body></head>", SNIPPET + b"<body>a</body></head>"),
        (b"<Body/>", SNIPPET + b"<Body/>"),
        (b"<head></head></head>", b"<head>" + SNIPPET + b"</head></head>"),
    ],
    ids=[
        "plain",
        "upper-case",
        "newline-in-tag",
        "no-head",
        "body-first",
        "self-closing-body",
        "first-only",
    ],
)
def test_the_snippet_goes_before_the_first_insertion_point(page: bytes, expected: bytes) -> None:
    assert inject(page, SNIPPET) == expected


@pytest.mark.parametrize(
    "page",
    [
        b"",
        b"just text",
        b"<header></header><bodyguard>",
        b"<html><head><title>never closed",
        b"</head",
        b"<head>" + MARKER + b"</head>",
        b'<head><script data-posthog-identity nonce="x"></script></head><body>',
        b"\xff\xfe<\x00h\x00",
    ],
    ids=[
        "empty",
        "text",
        "lookalike-tags",
        "unclosed",
        "truncated-tag",
        "marker",
        "our-script",
        "binary",
    ],
)
def test_pages_without_an_insertion_point_or_with_our_snippet_pass_untouched(page: bytes) -> None:
    assert inject(page, SNIPPET) == page


def test_past_the_lookahead_the_body_passes_through() -> None:
    page = b"<html><head>" + b"x" * 2000 + b"</head>"
    assert inject(page, SNIPPET, lookahead=1024) == page
    assert inject(page, SNIPPET, lookahead=4096) != page


def test_an_insertion_point_straddling_the_lookahead_boundary_is_not_used() -> None:
    page = b"x" * 1020 + b"</head>"
    assert inject(page, SNIPPET, lookahead=1024) == page


def test_the_injector_reports_its_decision() -> None:
    injector = HtmlInjector(SNIPPET)
    assert injector.feed(b"<html><he") == []
    assert not injector.decided
    out = injector.feed(b"ad></head><body>")
    assert injector.decided
    assert injector.injected
    # The chunk that holds the insertion point carries the snippet: one write.
    assert out == [b"<html><he", b"ad>" + SNIPPET + b"</head><body>"]
    assert injector.feed(b"rest") == [b"rest"]
    assert injector.finish() == []


def split(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    start = 0
    for point in points:
        yield data[start:point]
        start = point
    yield data[start:]


def stream(chunks: Iterator[bytes], lookahead: int = DEFAULT_LOOKAHEAD) -> bytes:
    injector = HtmlInjector(SNIPPET, lookahead)
    return b"".join(piece for chunk in chunks for piece in injector.feed(chunk)) + b"".join(
        injector.finish()
    )


html_fragments = st.sampled_from(
    [
        b"<html>",
        b"<head>",
        b"</head>",
        b"</HEAD >",
        b"<body>",
        b"<BODY class=a>",
        b"</body>",
        b"<header>",
        b"</head",
        b"<bod",
        b"<title>x</title>",
        b"text",
        b" ",
        b"\n",
        MARKER,
        b"<",
        b"/",
        b">",
        "é".encode(),
        b"\x00",
    ]
)
documents = st.lists(html_fragments, max_size=40).map(b"".join) | st.binary(max_size=300)


@settings(max_examples=400)
@given(documents, st.lists(st.integers(min_value=0), max_size=30))
def test_any_chunking_gives_the_one_shot_result(document: bytes, cuts: list[int]) -> None:
    assert stream(split(document, cuts), lookahead=1024) == inject(
        document, SNIPPET, lookahead=1024
    )


@settings(max_examples=300)
@given(documents)
def test_one_byte_chunks_give_the_one_shot_result(document: bytes) -> None:
    one_byte = (document[i : i + 1] for i in range(len(document)))
    assert stream(one_byte) == inject(document, SNIPPET)


@settings(max_examples=400)
@given(documents)
def test_the_original_is_recovered_by_removing_exactly_one_snippet(document: bytes) -> None:
    out = inject(document, SNIPPET)
    if out == document:
        return
    assert len(out) == len(document) + len(SNIPPET)
    position = out.find(SNIPPET)
    assert out[:position] + out[position + len(SNIPPET) :] == document
    assert out.count(SNIPPET) == document.count(SNIPPET) + 1


head_parts = st.lists(
    st.sampled_from([b"<title>t</title>", b"<meta charset=utf-8>", b"\n"]), max_size=4
)
body_parts = st.lists(st.sampled_from([b"<p>x</p>", b"text", b"<div>", b"</head>"]), max_size=6)


@given(head_parts, body_parts, st.booleans())
def test_an_html5_parser_finds_the_script_inside_head(
    head: list[bytes], body: list[bytes], with_head: bool
) -> None:
    start = b"<!doctype html><html><head>" + b"".join(head) + b"</head>" if with_head else b"<html>"
    page = start + b"<body>" + b"".join(body) + b"</body></html>"
    tree = html5lib.parse(inject(page, SNIPPET), namespaceHTMLElements=False)
    scripts = [s for s in tree.iter("script") if "data-posthog-identity" in s.attrib]
    assert len(scripts) == 1
    head_element = tree.find("head")
    assert head_element is not None
    assert scripts[0] in list(head_element)


@pytest.mark.parametrize("chunk_size", [4 * 1024, 64 * 1024], ids=["4KiB", "64KiB"])
@pytest.mark.parametrize(
    "first",
    [b"<html><head><title>big</title></head><body>", b"<html><p>"],
    ids=["injected", "no-insertion-point"],
)
def test_memory_stays_within_the_lookahead_and_one_chunk_for_a_100_mb_page(
    chunk_size: int, first: bytes
) -> None:
    filler = b"<p>" + b"x" * (chunk_size - 7) + b"</p>"
    total = 100 * 1024 * 1024
    injector = HtmlInjector(SNIPPET)
    tracemalloc.start()
    try:
        seen = sum(map(len, injector.feed(first)))
        for _ in range(total // chunk_size):
            # A fresh chunk each time, as an app produces them; sent, then dropped.
            seen += sum(map(len, injector.feed(bytes(memoryview(filler)))))
        seen += sum(map(len, injector.finish()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen >= total
    # Held chunks are kept as they are, never copied: at most the look-ahead
    # and the chunk in hand (the injector's memory bound), plus small change.
    assert peak <= DEFAULT_LOOKAHEAD + chunk_size + 2 * 1024


OK_HEAD = [("Content-Type", "text/html; charset=utf-8")]


@pytest.mark.parametrize(
    ("method", "status", "headers", "expected"),
    [
        ("GET", 200, OK_HEAD, True),
        ("POST", 201, [("content-type", "TEXT/HTML")], True),
        ("GET", 404, OK_HEAD, True),
        ("GET", 500, [("Content-Type", "text/html"), ("Content-Length", "12")], True),
        ("HEAD", 200, OK_HEAD, False),
        ("GET", 101, OK_HEAD, False),
        ("GET", 204, OK_HEAD, False),
        ("GET", 205, OK_HEAD, False),
        ("GET", 206, OK_HEAD, False),
        ("GET", 301, OK_HEAD, False),
        ("GET", 302, OK_HEAD, False),
        ("GET", 304, OK_HEAD, False),
        ("GET", 200, [("Content-Type", "application/json")], False),
        ("GET", 200, [("Content-Type", "application/xhtml+xml")], False),
        ("GET", 200, [("Content-Type", "text/htmlx")], False),
        ("GET", 200, [], False),
        ("GET", 200, [*OK_HEAD, ("Content-Encoding", "gzip")], False),
        ("GET", 200, [*OK_HEAD, ("Content-Encoding", "identity")], True),
        ("GET", 200, [*OK_HEAD, ("Content-Disposition", 'attachment; filename="a.html"')], False),
        ("GET", 200, [*OK_HEAD, ("Content-Disposition", "inline")], True),
        ("GET", 200, [*OK_HEAD, ("Content-Length", "abc")], False),
        ("GET", 200, [*OK_HEAD, ("Content-Length", "²")], False),
        ("GET", 200, [*OK_HEAD, ("Content-Length", "5"), ("Content-Length", "6")], False),
        ("GET", 200, [*OK_HEAD, ("Content-Length", "5"), ("Content-Length", "5")], True),
    ],
    ids=[
        "html",
        "post-upper",
        "404-page",
        "500-with-length",
        "head",
        "101",
        "204",
        "205",
        "206",
        "301",
        "302",
        "304",
        "json",
        "xhtml",
        "htmlx",
        "no-type",
        "gzip",
        "identity-encoding",
        "attachment",
        "inline",
        "bad-length",
        "unicode-digit-length",
        "conflicting-lengths",
        "repeated-length",
    ],
)
def test_skip_rules(
    method: str, status: int, headers: list[tuple[str, str]], expected: bool
) -> None:
    assert may_inject(method, status, headers) is expected
