"""The demo as a newcomer runs it: `python -m posthog_identity demo --port 0` in a
subprocess with no POSTHOG_* variables, its terminal collected line by line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

LISTENING = re.compile(r"posthog-identity demo on (http://127\.0\.0\.1:\d+)/")


def demo_environment() -> dict[str, str]:
    """This environment without POSTHOG_*: the demo picks its own sink and secret."""
    return {k: v for k, v in os.environ.items() if not k.startswith("POSTHOG")}


class Demo:
    """`python -m posthog_identity demo --port 0 [options]`; `url` once it serves."""

    def __init__(self, env: dict[str, str], *options: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-m", "posthog_identity", "demo", "--port", "0", *options],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        match = self.wait_for_line(LISTENING)
        self.url = match.group(1)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if match := pattern.search(line):
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.process.poll() is not None:
                    raise AssertionError(
                        f"no line matching {pattern.pattern!r} in:\n" + "\n".join(self.lines)
                    )
                self._changed.wait(remaining)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._reader.join(timeout=5)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return code
