"""Proxy: which paths the first-party proxy answers, and where it sends each one upstream."""

from __future__ import annotations

import pytest

from posthog_identity.proxy import Proxy
from posthog_identity.proxy_replies import BodyTooLarge, limited

# -- where requests go ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        ("/ingest/e/", "ip=1&_=123", "https://us.i.posthog.com/e/?ip=1&_=123"),
        ("/ingest/flags/", "v=2", "https://us.i.posthog.com/flags/?v=2"),
        ("/ingest/static/array.js", "", "https://us-assets.i.posthog.com/static/array.js"),
        (
            "/ingest/array/phc_x/config.js",
            "",
            "https://us-assets.i.posthog.com/array/phc_x/config.js",
        ),
        ("/ingest", "", "https://us.i.posthog.com/"),
    ],
)
def test_assets_go_to_the_assets_host_and_the_rest_to_ingestion(
    path: str, query: str, expected: str
) -> None:
    proxy = Proxy("/ingest", "https://us.i.posthog.com", max_body=10, timeout=1)
    assert proxy.upstream(path, query) == expected


@pytest.mark.parametrize("path", ["/ingest", "/ingest/", "/ingest/e/"])
def test_the_proxy_answers_its_path(path: str) -> None:
    assert Proxy("/ingest", "https://x", max_body=1, timeout=1).matches(path)


@pytest.mark.parametrize("path", ["/ingestion", "/", "/static/ingest"])
def test_the_proxy_leaves_other_paths_to_the_app(path: str) -> None:
    assert not Proxy("/ingest", "https://x", max_body=1, timeout=1).matches(path)


# -- which paths are refused --------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "raw_path"),
    [
        ("/ingest/static/../../etc/passwd", None),
        ("/ingest/./e/", None),
        ("/ingest/..", None),
        ("/ingest/%2e%2e/x", None),
        ("/ingest/a/b", "/ingest/a%2Fb"),
        ("/ingest/a/b", "/ingest/a%2fb"),
        ("/ingest/../x", "/ingest/%2E%2E/x"),
    ],
    ids=["dot-dot", "dot", "trailing", "encoded-in-decoded", "slash", "slash-lower", "raw-dots"],
)
def test_dot_segments_and_encoded_slashes_are_refused(path: str, raw_path: str | None) -> None:
    assert Proxy("/ingest", "https://x", max_body=1, timeout=1).refuses(path, raw_path)


@pytest.mark.parametrize(
    "path",
    [
        "/ingest/e/",
        "/ingest/static/array.full.js",
        "/ingest/i/v1/analytics/events",
        "/ingest/.well-known/x",
        "/ingest/...",
        "/ingest",
    ],
)
def test_posthog_js_paths_are_not_refused(path: str) -> None:
    assert not Proxy("/ingest", "https://x", max_body=1, timeout=1).refuses(path, path)


# -- the body's bound and the cap ------------------------------------------------------


def test_a_body_within_its_bound_passes_chunk_for_chunk() -> None:
    assert list(limited([b"ab", b"", b"cd"], 4)) == [b"ab", b"", b"cd"]


def test_a_body_crossing_its_bound_stops_before_the_chunk_that_crosses() -> None:
    chunks = limited([b"ab", b"cd", b"e"], 4)
    assert (next(chunks), next(chunks)) == (b"ab", b"cd")
    with pytest.raises(BodyTooLarge):
        next(chunks)


@pytest.mark.parametrize(("configured", "default", "places"), [(None, 3, 3), (2, 3, 2)])
def test_the_cap_is_the_configured_one_or_the_adapters_default(
    configured: int | None, default: int, places: int
) -> None:
    proxy = Proxy("/ingest", "https://x", max_body=1, timeout=1, concurrency=configured)
    admitted = [proxy.admit(default) for _ in range(places + 1)]
    assert admitted == [True] * places + [False]
    proxy.release()
    assert proxy.admit(default)
