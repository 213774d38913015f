"""The pytest plugin (entry point `posthog_identity`): the `posthog_sink` fixture.

Loading it imports nothing but pytest: the sink, werkzeug and posthog are
imported when a test first asks for the fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .fixture import PostHogSink
    from .server import Sink

__all__ = ["posthog_sink", "posthog_sink_server"]


@pytest.fixture(scope="session")
def posthog_sink_server() -> Iterator[Sink]:
    """One sink per test session (per xdist worker), on an ephemeral 127.0.0.1 port."""
    from .server import Sink

    with Sink("127.0.0.1", 0) as sink:
        yield sink


@pytest.fixture
def posthog_sink(posthog_sink_server: Sink) -> Iterator[PostHogSink]:
    """What this test's apps send to PostHog.

    `POSTHOG_HOST` points at the session's sink while the test runs (and
    `POSTHOG_API_KEY` and `POSTHOG_IDENTITY_SECRET` are set to test values when
    unset), so apps the test builds start and send there; the environment is
    restored after. Each test starts with no events and no flags.
    """
    from .fixture import PostHogSink

    with PostHogSink(posthog_sink_server).pointed_at() as recorded:
        yield recorded
