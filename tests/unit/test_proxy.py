"""Proxy: which paths the first-party proxy answers, and where it sends each one upstream."""

from __future__ import annotations

import pytest

from posthog_identity.proxy import Proxy

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
