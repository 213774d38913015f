"""Hosts: the assets and app hosts that go with an ingestion host (PostHog Cloud's regions,
self-hosted)."""

from __future__ import annotations

import pytest

from posthog_identity.hosts import app_host, assets_host

# -- where requests go ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "assets", "app"),
    [
        ("https://us.i.posthog.com", "https://us-assets.i.posthog.com", "https://us.posthog.com"),
        ("https://eu.i.posthog.com", "https://eu-assets.i.posthog.com", "https://eu.posthog.com"),
        ("https://ph.example.com", "https://ph.example.com", "https://ph.example.com"),
    ],
    ids=["us", "eu", "self-hosted"],
)
def test_assets_and_the_app_host_follow_the_ingestion_host(
    host: str, assets: str, app: str
) -> None:
    assert (assets_host(host), app_host(host)) == (assets, app)
