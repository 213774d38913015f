"""Which PostHog host serves what, derived from the ingestion host (`POSTHOG_HOST`)."""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["app_host", "assets_host"]


def assets_host(host: str) -> str:
    """Where posthog-js and its extensions live for an ingestion host."""
    parts = urlsplit(host)
    hostname = parts.hostname or ""
    if hostname.endswith(".i.posthog.com"):
        region = hostname[: -len(".i.posthog.com")].removesuffix("-assets")
        return f"https://{region}-assets.i.posthog.com"
    if hostname in ("app.posthog.com", "us.posthog.com"):
        return "https://us-assets.i.posthog.com"
    if hostname == "eu.posthog.com":
        return "https://eu-assets.i.posthog.com"
    return host.rstrip("/")


def app_host(host: str) -> str:
    """PostHog's app (the toolbar, links in posthog-js) for an ingestion host."""
    hostname = urlsplit(host).hostname or ""
    if hostname in ("us.i.posthog.com", "app.posthog.com", "us.posthog.com"):
        return "https://us.posthog.com"
    if hostname in ("eu.i.posthog.com", "eu.posthog.com"):
        return "https://eu.posthog.com"
    return host.rstrip("/")
