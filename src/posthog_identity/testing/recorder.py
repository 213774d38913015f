"""What a sink received: events and its side traffic, kept in arrival order.

Thread-safe: server threads record, the test's thread reads and waits. Every
read returns copies, so a caller can never change what is kept.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import Callable
from typing import IO, Any

from .protocol import Event, distinct_id_of

__all__ = ["Predicate", "Recorder", "describe_arrivals"]

logger = logging.getLogger("posthog_identity.testing")

Predicate = Callable[[list[Event]], bool]


def describe_arrivals(events: list[Event]) -> str:
    """What arrived, for an error message: each event as (event, distinct_id)."""
    arrived = [(e["event"], distinct_id_of(e)) for e in events]
    return f"{len(arrived)} event(s) arrived, as (event, distinct_id): {arrived}"


class Recorder:
    """The events, flags requests, definitions requests, config tokens and
    recording count a sink received since it started or was last cleared.

    :param jsonl: a text file each event is also appended to, one JSON line.
    :param on_event: called with a copy of each event; its errors are logged.
    :param on_flag_request: called with a copy of each flags request; errors logged.
    """

    def __init__(
        self,
        *,
        jsonl: IO[str] | None = None,
        on_event: Callable[[Event], None] | None = None,
        on_flag_request: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.jsonl = jsonl
        self._on_event = on_event
        self._on_flag_request = on_flag_request
        self._events: list[Event] = []
        self._flag_requests: list[dict[str, Any]] = []
        self._definition_requests: list[dict[str, Any]] = []
        self._config_tokens: list[str] = []
        self._recordings = 0
        self._changed = threading.Condition()

    # -- recording, from the server's threads ------------------------------------

    def events_arrived(self, events: list[Event]) -> None:
        with self._changed:
            self._events.extend(events)
            if self.jsonl is not None:
                for event in events:
                    self.jsonl.write(json.dumps(event) + "\n")
                self.jsonl.flush()
            self._changed.notify_all()
        if self._on_event is None:
            return
        for event in events:
            try:
                self._on_event(copy.deepcopy(event))
            except Exception:
                logger.exception("on_event failed for %r", event["event"])

    def flag_request_arrived(self, request: dict[str, Any]) -> None:
        with self._changed:
            self._flag_requests.append(request)
            self._changed.notify_all()
        if self._on_flag_request is None:
            return
        try:
            self._on_flag_request(copy.deepcopy(request))
        except Exception:
            logger.exception("on_flag_request failed for %r", request["distinct_id"])

    def definition_request_arrived(self, request: dict[str, Any]) -> None:
        with self._changed:
            self._definition_requests.append(request)
            self._changed.notify_all()

    def config_request_arrived(self, token: str) -> None:
        with self._changed:
            self._config_tokens.append(token)
            self._changed.notify_all()

    def recording_arrived(self) -> None:
        with self._changed:
            self._recordings += 1
            self._changed.notify_all()

    # -- reading, from the test's thread -------------------------------------------

    def events(self, event: str | None = None, distinct_id: str | None = None) -> list[Event]:
        with self._changed:
            return copy.deepcopy(self._matching(event, distinct_id))

    def flag_requests(self) -> list[dict[str, Any]]:
        with self._changed:
            return copy.deepcopy(self._flag_requests)

    def definition_requests(self) -> list[dict[str, Any]]:
        with self._changed:
            return copy.deepcopy(self._definition_requests)

    def config_tokens(self) -> list[str]:
        with self._changed:
            return list(self._config_tokens)

    def recording_count(self) -> int:
        with self._changed:
            return self._recordings

    def wait_for(
        self,
        predicate: Predicate | None,
        *,
        count: int | None,
        event: str | None,
        distinct_id: str | None = None,
        timeout: float,
    ) -> list[Event] | None:
        """The matching events once enough arrived, or None after `timeout` seconds.

        Enough means at least `count` of them and `predicate(events)` true;
        with neither given, at least one.
        """
        needed = 1 if count is None and predicate is None else count

        def satisfied() -> bool:
            found = self._matching(event, distinct_id)
            if needed is not None and len(found) < needed:
                return False
            return predicate is None or bool(predicate(copy.deepcopy(found)))

        with self._changed:
            if self._changed.wait_for(satisfied, timeout):
                return copy.deepcopy(self._matching(event, distinct_id))
            return None

    def arrivals(self) -> str:
        """`describe_arrivals` of everything kept."""
        with self._changed:
            return describe_arrivals(self._events)

    def clear(self) -> None:
        with self._changed:
            self._events.clear()
            self._flag_requests.clear()
            self._definition_requests.clear()
            self._config_tokens.clear()
            self._recordings = 0

    def _matching(self, event: str | None, distinct_id: str | None) -> list[Event]:
        return [
            e
            for e in self._events
            if (event is None or e["event"] == event)
            and (distinct_id is None or distinct_id_of(e) == distinct_id)
        ]
