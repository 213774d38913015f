"""Login links whose delivery failed: kept in memory and sent again until PostHog takes them.

The login link (`$create_alias`) is the one event that cannot be recreated
later. posthog's client retries a failed batch for a few seconds, then hands it
to its ``on_error`` callback and drops it. A `LinkResender` is that callback: it
keeps the batch's links (other events keep posthog's behaviour) and posts them
again from a thread of its own, oldest first, each with its original uuid and
timestamp, backing off while PostHog stays unreachable. A repeated link is
harmless: PostHog treats a second `$create_alias` of the same pair as a no-op
and drops a message whose uuid it already has.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from posthog.client import Client
from posthog.request import APIError, batch_post

__all__ = ["LINK_EVENT", "POLICY", "LinkResender", "Policy", "protect", "resender_for"]

logger = logging.getLogger("posthog_identity")

LINK_EVENT = "$create_alias"

ErrorCallback = Callable[[Exception, list[Any]], None]


@dataclass(frozen=True)
class Policy:
    """How many failed links are kept, for how long, and how often they are retried."""

    #: Links kept at most; beyond it the oldest are dropped (with a warning).
    max_pending: int = 10_000
    #: Seconds a link is retried before it is dropped (with a warning).
    max_age: float = 24 * 60 * 60.0
    #: Wait before the first retry; it doubles after each failure...
    first_delay: float = 1.0
    #: ...up to this, or longer when PostHog's Retry-After asks for it (capped here too).
    max_delay: float = 30.0
    #: Links per request.
    batch_size: int = 100


#: The policy new resenders follow. The values are documented in docs/identity.md.
POLICY = Policy()


@dataclass
class _Kept:
    message: dict[str, Any]
    since: float  # time.monotonic() when it was kept


class LinkResender:
    """posthog's ``on_error`` callback that keeps the failed batch's links and resends them.

    :param previous: the client's own ``on_error``, still called after ours.
    :param policy: bounds and backoff; default `POLICY`.
    """

    def __init__(self, previous: ErrorCallback | None = None, policy: Policy | None = None) -> None:
        self.previous = previous
        self.policy = POLICY if policy is None else policy
        self._client: weakref.ref[Client] | None = None
        self._reset()
        _live.add(self)

    def _reset(self) -> None:
        """Fresh state: at construction, and in a forked child (the parent keeps its links)."""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._sending = threading.Lock()  # one request at a time: the thread's, or close()'s
        self._pending: deque[_Kept] = deque()
        self._failures = 0
        self._delay = 0.0
        self._closed = False
        self._thread: threading.Thread | None = None

    def bind(self, client: Client) -> None:
        """Resend with this client's key, host, compression and timeout."""
        self._client = weakref.ref(client)

    def __call__(self, error: Exception, batch: list[Any]) -> None:
        """posthog's consumer thread: its retries of `batch` failed with `error`."""
        try:
            self.keep(m for m in batch if isinstance(m, dict) and m.get("event") == LINK_EVENT)
        finally:
            if self.previous is not None:
                self.previous(error, batch)

    def __len__(self) -> int:
        return len(self._pending)

    def __bool__(self) -> bool:
        # posthog calls its callback only `if self.on_error:`; an empty resender still counts.
        return True

    def keep(self, messages: Iterable[dict[str, Any]]) -> None:
        """Keep `messages` for resending; past `max_pending`, drop the oldest."""
        now = time.monotonic()
        with self._lock:
            added = [_Kept(message, now) for message in messages]
            if not added:
                return
            if self._closed:
                logger.warning(
                    "posthog_identity: %d login link(s) failed to reach PostHog after "
                    "shutdown began and are lost",
                    len(added),
                )
                return
            self._pending.extend(added)
            dropped = 0
            while len(self._pending) > self.policy.max_pending:
                self._pending.popleft()
                dropped += 1
            self._start_locked()
            self._changed.notify_all()
        logger.info(
            "posthog_identity: %d login link(s) failed to reach PostHog; kept to send again",
            len(added),
        )
        if dropped:
            logger.warning(
                "posthog_identity: dropped the %d oldest login link(s) waiting for PostHog: "
                "at most %d are kept",
                dropped,
                self.policy.max_pending,
            )

    def close(self, timeout: float) -> int:
        """Shutdown: one last attempt within `timeout` seconds, then log what is lost.

        Returns the number of links lost. Links failing after this are logged as lost too.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closed:
                return 0
            self._closed = True
            self._changed.notify_all()
        while self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._sending.acquire(timeout=remaining):
                break
            try:
                # requests' timeout bounds the connect and the read each: half for each.
                delivered = self._attempt(timeout=max(deadline - time.monotonic(), 0.01) / 2)
            finally:
                self._sending.release()
            if not delivered:
                break
        with self._lock:
            lost = len(self._pending)
            self._pending.clear()
        if lost:
            logger.warning(
                "posthog_identity: %d login link(s) not yet accepted by PostHog at shutdown "
                "are lost",
                lost,
            )
        return lost

    # The resending thread ---------------------------------------------------

    def _start_locked(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="posthog-identity-resend", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                # Woken early only by close(): new links wait for the current delay.
                deadline = time.monotonic() + self._delay
                while not self._closed and (left := deadline - time.monotonic()) > 0:
                    self._changed.wait(left)
                if self._closed:
                    return
            with self._sending:
                self._attempt(timeout=None)

    def _attempt(self, timeout: float | None) -> bool:
        """Post the oldest batch (the caller holds `_sending`); True when PostHog took it."""
        batch = self._head()
        if not batch:
            return True
        client = self._client() if self._client is not None else None
        if client is None:  # the client is gone: nothing left to send with
            self._remove(batch)
            return False
        try:
            batch_post(
                client.api_key,
                client.host,
                gzip=bool(getattr(client, "gzip", False)),
                timeout=timeout if timeout is not None else getattr(client, "timeout", 15),
                batch=[kept.message for kept in batch],
                historical_migration=bool(getattr(client, "historical_migration", False)),
            )
        except Exception as error:
            if _retryable(error):
                self._failed(error)
                return False
            logger.error(
                "posthog_identity: PostHog refused %d login link(s) (%s); they are dropped",
                len(batch),
                error,
            )
            self._remove(batch)
            return False
        self._remove(batch)
        with self._lock:
            self._failures, self._delay = 0, 0.0
        logger.info("posthog_identity: %d kept login link(s) reached PostHog", len(batch))
        return True

    def _head(self) -> list[_Kept]:
        """The oldest links, up to a batch; those past `max_age` are dropped first."""
        oldest_allowed = time.monotonic() - self.policy.max_age
        expired = 0
        with self._lock:
            while self._pending and self._pending[0].since < oldest_allowed:
                self._pending.popleft()
                expired += 1
            size = min(len(self._pending), self.policy.batch_size)
            batch = [self._pending[i] for i in range(size)]
        if expired:
            logger.warning(
                "posthog_identity: dropped %d login link(s) PostHog did not accept within %d s",
                expired,
                int(self.policy.max_age),
            )
        return batch

    def _remove(self, batch: list[_Kept]) -> None:
        done = {id(kept) for kept in batch}
        with self._lock:
            self._pending = deque(kept for kept in self._pending if id(kept) not in done)

    def _failed(self, error: Exception) -> None:
        policy = self.policy
        retry_after = getattr(error, "retry_after", None)
        with self._lock:
            delay = policy.first_delay * 2**self._failures
            if isinstance(retry_after, (int, float)) and retry_after > 0:
                delay = max(delay, retry_after)
            self._delay = min(delay, policy.max_delay)
            self._failures = min(self._failures + 1, 32)
            waiting, delay = len(self._pending), self._delay
        logger.info(
            "posthog_identity: resending %d login link(s) failed (%s); next try in %.1f s",
            waiting,
            error,
            delay,
        )


def _retryable(error: Exception) -> bool:
    """posthog's own rule: client errors are final, except 408 and 429."""
    if isinstance(error, APIError):
        status = error.status
        return not (isinstance(status, int) and 400 <= status < 500 and status not in (408, 429))
    return True


# Every resender, so a forked child (gunicorn --preload) starts over with its own.
_live: weakref.WeakSet[LinkResender] = weakref.WeakSet()


def _after_fork() -> None:
    for resender in list(_live):
        resender._reset()


os.register_at_fork(after_in_child=_after_fork)

# The resender of each client this process sends links through.
_resenders: weakref.WeakKeyDictionary[Client, LinkResender] = weakref.WeakKeyDictionary()


def resender_for(client: Client) -> LinkResender | None:
    """The resender keeping `client`'s failed links, if any."""
    return _resenders.get(client)


def protect(client: Client, resender: LinkResender | None = None) -> LinkResender | None:
    """Keep the links `client` fails to deliver; None when its posthog version gives no way.

    `resender` is the one the client was built with (``on_error=resender``). A
    client built elsewhere (passed in, or posthog's module client) had its
    ``on_error`` set at construction and its consumers copied it: the resender
    is put in front of it there, and the app's own callback still runs after.
    """
    found = _resenders.get(client)
    if found is not None:
        return found
    if resender is None:
        resender = LinkResender(previous=getattr(client, "on_error", None))
        if not _install(client, resender):
            return None
    resender.bind(client)
    _resenders[client] = resender
    return resender


def _install(client: Client, callback: ErrorCallback) -> bool:
    """Make `callback` the upload-failure callback of `client`'s consumer threads.

    posthog 7 copies ``on_error`` from the client into each lane (one queue per
    traffic class) and from the lane into each consumer thread, including those
    started later or rebuilt after a fork.
    """
    lanes = getattr(client, "_lanes", None)
    if not isinstance(lanes, list) or not all(
        hasattr(lane, "on_error") and isinstance(getattr(lane, "consumers", None), list)
        for lane in lanes
    ):
        return False
    client.on_error = callback
    for lane in lanes:
        lane.on_error = callback
        for consumer in lane.consumers:
            consumer.on_error = callback
    return True
