"""The response plan, sans-IO: a `BodyRewrite` holds the head, hands out the pieces and the
corrected Content-Length; `shared_cacheable` and `UNTOUCHED` say when to leave a response alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from posthog_identity.html import MARKER, inject
from posthog_identity.response import UNTOUCHED, BodyRewrite, ResponsePlan, shared_cacheable

SNIPPET = b"<script data-posthog-identity>init()</script>"
PAGE = b"<html><head><title>t</title></head><body>hello</body></html>"
LOOKAHEAD = 1024


def drain(rewrite: BodyRewrite, chunks: list[bytes]) -> list[bytes]:
    """Every piece the rewrite hands out for `chunks`, then for the end of the body."""
    pieces = [piece for chunk in chunks for piece in rewrite.feed(chunk)]
    return pieces + rewrite.finish()


def test_nothing_leaves_while_the_head_is_held_and_the_held_chunks_leave_at_the_decision() -> None:
    rewrite = BodyRewrite(SNIPPET, LOOKAHEAD)
    assert rewrite.holding
    assert rewrite.feed(b"<html><he") == []
    assert rewrite.feed(b"ad><title>t</title>") == []
    assert rewrite.holding

    pieces = rewrite.feed(b"</head><body>")

    assert not rewrite.holding
    assert b"".join(pieces) == b"<html><head><title>t</title>" + SNIPPET + b"</head><body>"


def test_after_the_decision_each_chunk_is_its_own_piece_and_an_empty_one_is_none() -> None:
    rewrite = BodyRewrite(SNIPPET, LOOKAHEAD)
    rewrite.feed(b"<html><head></head>")

    assert rewrite.feed(b"<p>one</p>") == [b"<p>one</p>"]
    assert rewrite.feed(b"") == []
    assert rewrite.finish() == []


@pytest.mark.parametrize("size", [100, 10_000], ids=["small", "20KB"])
def test_a_page_sized_chunk_holding_the_insertion_point_leaves_as_one_piece_with_the_snippet(
    size: int,
) -> None:
    before, after = b"<html><head>" + b"m" * size, b"</head><body>" + b"b" * size
    rewrite = BodyRewrite(SNIPPET, 64 * 1024 + 2 * size)

    assert rewrite.feed(before + after) == [before + SNIPPET + after]


@pytest.mark.parametrize("size", [20_000, 1_000_000], ids=["40KB", "2MB"])
def test_a_large_chunk_holding_the_insertion_point_is_cut_around_the_snippet(size: int) -> None:
    # Joined, the chunk would be copied with the snippet: one chunk more in memory.
    before, after = b"<html><head>" + b"m" * size, b"</head><body>" + b"b" * size
    rewrite = BodyRewrite(SNIPPET, 64 * 1024 + 2 * size)

    assert rewrite.feed(before + after) == [before, SNIPPET, after]


def test_an_injected_pages_content_length_grows_by_exactly_the_snippet() -> None:
    rewrite = BodyRewrite(SNIPPET, LOOKAHEAD)
    drain(rewrite, [PAGE])
    head = [
        ("Content-Type", "text/html"),
        ("content-LENGTH", str(len(PAGE))),
        ("X-Length", "7"),
    ]

    assert rewrite.headers(head) == [
        ("Content-Type", "text/html"),
        ("content-LENGTH", str(len(PAGE) + len(SNIPPET))),
        ("X-Length", "7"),
    ]


def test_asgi_byte_pairs_get_the_same_correction() -> None:
    rewrite = BodyRewrite(SNIPPET, LOOKAHEAD)
    drain(rewrite, [PAGE])
    head = [(b"content-type", b"text/html"), (b"Content-Length", b"%d" % len(PAGE))]

    assert rewrite.raw_headers(iter(head)) == [
        (b"content-type", b"text/html"),
        (b"Content-Length", b"%d" % (len(PAGE) + len(SNIPPET))),
    ]


def test_an_injected_page_without_content_length_gets_none() -> None:
    rewrite = BodyRewrite(SNIPPET, LOOKAHEAD)
    drain(rewrite, [PAGE])
    head = [("Content-Type", "text/html"), ("Transfer-Encoding", "chunked")]

    assert rewrite.headers(head) == head
    assert rewrite.raw_headers([(b"content-type", b"text/html")]) == [
        (b"content-type", b"text/html")
    ]


@pytest.mark.parametrize(
    "page",
    [b"<p>no insertion point</p>", b"<html><head>" + MARKER + b"</head>"],
    ids=["no-insertion-point", "already-has-our-snippet"],
)
def test_a_page_left_as_it_is_keeps_its_bytes_and_its_head(page: bytes) -> None:
    rewrite = BodyRewrite(SNIPPET, LOOKAHEAD)
    head = [("Content-Type", "text/html"), ("Content-Length", str(len(page)))]
    raw_head = [(b"content-length", b"%d" % len(page))]

    assert drain(rewrite, [page[:5], page[5:]]) == [page[:5], page[5:]]
    assert rewrite.headers(head) == head
    assert rewrite.raw_headers(iter(raw_head)) == raw_head


def test_once_the_lookahead_is_spent_the_held_chunks_leave_untouched() -> None:
    rewrite = BodyRewrite(SNIPPET, 16)
    head = [("Content-Length", "30")]

    assert rewrite.feed(b"x" * 10) == []
    assert rewrite.feed(b"y" * 6) == [b"x" * 10, b"y" * 6]
    assert not rewrite.holding
    assert rewrite.feed(b"</head><body>") == [b"</head><body>"]
    assert rewrite.headers(head) == head


def split(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    start = 0
    for point in points:
        yield data[start:point]
        start = point
    yield data[start:]


fragments = st.sampled_from(
    [b"<html>", b"<head>", b"</head>", b"<body>", b"<title>t</title>", b"text", b"<", MARKER]
)
pages = st.lists(fragments, max_size=30).map(b"".join)


@given(pages, st.lists(st.integers(min_value=0), max_size=20), st.sampled_from([8, 64, 1024]))
def test_any_chunking_gives_the_one_shot_body_and_a_content_length_equal_to_its_length(
    page: bytes, cuts: list[int], lookahead: int
) -> None:
    rewrite = BodyRewrite(SNIPPET, lookahead)
    pieces = drain(rewrite, list(split(page, cuts)))
    body = b"".join(pieces)

    assert body == inject(page, SNIPPET, lookahead)
    assert b"" not in pieces
    assert rewrite.headers([("Content-Length", str(len(page)))]) == [
        ("Content-Length", str(len(body)))
    ]
    assert rewrite.raw_headers([(b"content-length", b"%d" % len(page))]) == [
        (b"content-length", b"%d" % len(body))
    ]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("Cache-Control", "public, max-age=60")], True),
        ([("cache-control", "PUBLIC")], True),
        ([("Cache-Control", "max-age=60, S-MaxAge=600")], True),
        ([("Cache-Control", "no-cache"), ("Cache-Control", "public")], True),
        ([("Cache-Control", "private, max-age=60")], False),
        ([("Cache-Control", "max-age=60")], False),
        ([("Cache-Control", "publicity, s-maxage-ish=1")], False),
        ([("Cache-Control", 'no-cache="public"')], False),
        ([("X-Cache-Control", "public"), ("Surrogate-Control", "s-maxage=60")], False),
        ([], False),
    ],
    ids=[
        "public",
        "upper-case",
        "s-maxage",
        "second-header",
        "private",
        "max-age-only",
        "lookalike-directives",
        "public-as-a-value",
        "other-headers",
        "none",
    ],
)
def test_shared_cacheable(headers: list[tuple[str, str]], expected: bool) -> None:
    assert shared_cacheable(headers) is expected


def test_untouched_adds_no_header_and_leaves_the_body_alone() -> None:
    assert ResponsePlan(headers=(), body=None) == UNTOUCHED
