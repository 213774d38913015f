"""The real posthog-js in Chromium (`nox -s browser`): what the browser keeps and sends."""
