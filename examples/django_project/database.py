"""Create and migrate the example's SQLite database when the server starts."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.db import connections


def migrate() -> None:
    """`manage.py migrate`, in a thread of its own: uvicorn imports the app inside
    its event loop, where Django refuses to touch the database."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(_migrate).result()


def _migrate() -> None:
    # Several workers may start at once on the same file: one migrates at a time.
    with _locked(Path(settings.DATABASES["default"]["NAME"]).with_suffix(".lock")):
        try:
            call_command("migrate", run_syncdb=True, interactive=False, verbosity=0)
        finally:
            connections.close_all()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: start one worker
        yield
        return
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
