"""The library's logger, and warnings given once per kind so a broken hook cannot flood the log."""

from __future__ import annotations

import logging
import threading

__all__ = ["WarnOnce", "logger"]

logger = logging.getLogger("posthog_identity")


class WarnOnce:
    """``warn(kind, message, *args, exc=None)``: log a warning the first time `kind` is seen."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(
        self, kind: str, message: str, *args: object, exc: BaseException | None = None
    ) -> None:
        with self._lock:
            if kind in self._seen:
                return
            self._seen.add(kind)
        logger.warning(message, *args, exc_info=exc)
