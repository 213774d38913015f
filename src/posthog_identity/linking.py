"""The login link: merge an anonymous id into a user, once, in PostHog's direction."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

import posthog
from posthog.client import Client

if TYPE_CHECKING:
    from .identity import Link

__all__ = ["RecentLinks", "send_link"]

logger = logging.getLogger("posthog_identity")


def send_link(client: Client, link: Link) -> None:
    """Send `$create_alias`: distinct_id = user id, properties.alias = anonymous id.

    PostHog keeps the person of the event's distinct_id and merges in the person
    of `alias`, refusing when that one is already identified; so the user must be
    the distinct_id. posthog-python's argument names read the other way round:
    `alias(previous_id=...)` becomes the event's distinct_id. A fresh posthog
    context keeps request tags (like `$process_person_profile`) off this event.
    """
    with posthog.new_context(fresh=True, capture_exceptions=False):
        client.alias(previous_id=link.user_id, distinct_id=link.anonymous_id)


class RecentLinks:
    """A bounded, thread-safe memory of links sent by this process.

    A browser often sends several requests at once with the pre-login cookie;
    each would resolve to the same login. Remembering recent (user, anonymous)
    pairs sends the link once per process; a repeat from another process is
    harmless to PostHog.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, link: Link) -> bool:
        """Record the link; True only for the first call with this pair."""
        key = (link.user_id, link.anonymous_id)
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return False
            self._seen[key] = None
            if len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
            return True

    def __len__(self) -> int:
        return len(self._seen)
