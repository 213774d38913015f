"""Tests of `posthog_identity.integrations`: one module per framework."""
