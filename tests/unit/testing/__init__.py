"""Tests of `posthog_identity.testing`: the sink and the pytest plugin."""
