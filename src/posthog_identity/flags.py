"""Feature flags for one distinct id, evaluated once and shared by server and browser.

With a personal API key posthog's client polls the flag definitions and
evaluates locally: no network per request. Without one, each evaluation is a
remote call bounded by a strict timeout; on timeout or error the page simply
gets no flag bootstrap.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from posthog.client import Client

    from .logs import WarnOnce

__all__ = ["FlagContext", "FlagSource", "Flags", "RequestFlags"]

logger = logging.getLogger("posthog_identity")

FlagValue = bool | str


@dataclass(frozen=True)
class FlagContext:
    """What a `flag_context` hook returns: person properties and groups for evaluation."""

    person_properties: Mapping[str, Any] = field(default_factory=dict)
    groups: Mapping[str, str] = field(default_factory=dict)
    group_properties: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


FlagContextHook = Callable[[object], FlagContext | None]
"""``callable(native request) -> FlagContext``: person properties and groups for evaluation."""


@dataclass(frozen=True)
class Flags:
    """One evaluation: flag values and payloads keyed by flag key."""

    values: Mapping[str, FlagValue]
    payloads: Mapping[str, Any]


# Remote evaluations run here so a slow PostHog can be abandoned at the timeout.
_remote = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="posthog-flags")


class FlagSource:
    """Evaluates flags through a posthog client, bounded and never raising.

    :param keys: the flags to evaluate; empty means all of them.
    :param local: evaluate from polled definitions only (needs a personal key).
    """

    def __init__(
        self,
        client: Client,
        keys: tuple[str, ...],
        *,
        local: bool,
        timeout: float,
    ) -> None:
        self.client = client
        self.keys = keys
        self.local = local
        self.timeout = timeout
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        if local and getattr(client, "feature_flags", None) is None:
            # Off every request's path: posthog would otherwise load them inside
            # an evaluation, synchronously (up to 10 s; on the loop in ASGI).
            threading.Thread(target=self._load, name="posthog-flags-load", daemon=True).start()

    def _load(self) -> None:
        try:
            self.client.load_feature_flags()  # type: ignore[no-untyped-call]  # + poller
        except Exception as error:
            self._warn("load", "loading the flag definitions failed (%s)", error)

    def evaluate(self, distinct_id: str, context: FlagContext | None = None) -> Flags | None:
        """The flags for `distinct_id`, or None (logged) when they cannot be had in time."""
        if self.local:
            if not self.client.feature_flags:
                # None: not loaded (yet, or refused; the poller retries). []: none.
                self._warn("unloaded", "flag definitions are not loaded; no flag bootstrap")
                return None
            return self._evaluate(distinct_id, context)
        future = _remote.submit(self._evaluate, distinct_id, context)
        try:
            return future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            self._warn(
                "timeout", "flag evaluation took longer than %.3fs; no flag bootstrap", self.timeout
            )
            return None

    def _evaluate(self, distinct_id: str, context: FlagContext | None) -> Flags | None:
        context = context or FlagContext()
        try:
            result = self.client.get_all_flags_and_payloads(
                distinct_id,
                person_properties=dict(context.person_properties) or None,
                groups=dict(context.groups) or None,
                group_properties={k: dict(v) for k, v in context.group_properties.items()} or None,
                only_evaluate_locally=self.local,
                flag_keys_to_evaluate=list(self.keys) or None,
            )
        except Exception as error:
            self._warn(
                f"error:{type(error).__name__}",
                "flag evaluation failed (%s); no flag bootstrap",
                error,
            )
            return None
        values = result.get("featureFlags")
        if not values:
            # posthog answers None (a disabled client) or {} (definitions not
            # loaded, /flags failed): nothing to bootstrap either way.
            self._warn(
                "unavailable",
                "flags are unavailable (definitions not loaded or /flags failed); "
                "no flag bootstrap",
            )
            return None
        payloads = result.get("featureFlagPayloads") or {}
        missing = [key for key in self.keys if key not in values]
        if missing:
            self._warn(
                f"unknown:{','.join(missing)}", "unknown flag key(s): %s", ", ".join(missing)
            )
        if self.keys:
            values = {k: v for k, v in values.items() if k in self.keys}
            payloads = {k: v for k, v in payloads.items() if k in self.keys}
        return Flags(dict(values), dict(payloads))

    def _warn(self, kind: str, message: str, *args: object) -> None:
        with self._lock:
            if kind in self._warned:
                return
            self._warned.add(kind)
        logger.warning("posthog_identity: " + message, *args)


class RequestFlags:
    """One request's flags: evaluated once per distinct id, exposures reported once per key.

    A login or logout inside the request changes its distinct id, so each
    evaluation is kept by id; `bound` gives an `Identity` its own view.

    :param context: the app's `flag_context` hook bound to the request; one that
        raises means no flags for this request (logged once per kind).
    """

    __slots__ = ("_context", "_evaluated", "_exposed", "_warn", "source")

    def __init__(
        self,
        source: FlagSource,
        context: Callable[[], FlagContext | None] | None,
        warn: WarnOnce,
    ) -> None:
        self.source = source
        self._context = context
        self._warn = warn
        self._evaluated: dict[str, Flags | None] = {}
        self._exposed: set[str] = set()

    def pending(self, distinct_id: str) -> bool:
        """True when reading the flags now would wait on the network (remote, not evaluated)."""
        return not self.source.local and distinct_id not in self._evaluated

    def current(self, distinct_id: str) -> Flags | None:
        if distinct_id not in self._evaluated:
            self._evaluated[distinct_id] = self._evaluate(distinct_id)
        return self._evaluated[distinct_id]

    def _evaluate(self, distinct_id: str) -> Flags | None:
        context = None
        if self._context is not None:
            try:
                context = self._context()
            except Exception as error:
                self._warn(
                    f"flag-context:{type(error).__name__}",
                    "the flag_context hook raised %s; no flag bootstrap for this request",
                    type(error).__name__,
                    exc=error,
                )
                return None
        return self.source.evaluate(distinct_id, context)

    def expose(self, key: str, value: object) -> None:
        """Report that the app read `key` on the server, once per request and key."""
        if key in self._exposed:
            return
        self._exposed.add(key)
        try:
            self.source.client.capture(
                "$feature_flag_called",
                properties={"$feature_flag": key, "$feature_flag_response": value},
            )
        except Exception:
            logger.exception("posthog_identity: reporting a flag exposure failed")

    def bound(self, distinct_id: str) -> BoundFlags:
        return BoundFlags(self, distinct_id)


class BoundFlags:
    """The request's flags for one distinct id: what `Identity.flags` reads."""

    __slots__ = ("_distinct_id", "_flags")

    def __init__(self, flags: RequestFlags, distinct_id: str) -> None:
        self._flags = flags
        self._distinct_id = distinct_id

    def values(self) -> Mapping[str, FlagValue]:
        flags = self._flags.current(self._distinct_id)
        return {} if flags is None else flags.values

    def payloads(self) -> Mapping[str, Any]:
        flags = self._flags.current(self._distinct_id)
        return {} if flags is None else flags.payloads

    def expose(self, key: str, value: object) -> None:
        self._flags.expose(key, value)
