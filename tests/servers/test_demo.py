"""The demo, run as a newcomer runs it: a subprocess, walked through by an HTTP client."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

LISTENING = re.compile(r"posthog-identity demo on (http://127\.0\.0\.1:\d+)/")


class Demo:
    """`python -m posthog_identity demo --port 0` with its terminal collected line by line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-m", "posthog_identity", "demo", "--port", "0"],
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


@pytest.fixture
def demo() -> Iterator[Demo]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTHOG")}
    running = Demo(env)
    yield running
    assert running.stop() == 0


def identity_cookie(response: httpx.Response) -> str | None:
    for header in response.headers.get_list("set-cookie"):
        if header.startswith("ph_identity="):
            return header.split(";", 1)[0].split("=", 1)[1]
    return None


def events(client: httpx.Client, predicate: Any, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        snapshot = client.get("/events.json").json()
        if predicate(snapshot) or time.monotonic() > deadline:
            return snapshot  # type: ignore[no-any-return]
        time.sleep(0.1)


def test_the_demo_walks_a_visitor_through_login_and_logout(demo: Demo) -> None:
    with httpx.Client(base_url=demo.url, follow_redirects=False) as client:
        home = client.get("/")
        assert home.status_code == 200
        assert "No POSTHOG_API_KEY" in home.text, "the embedded sink is said on screen"
        assert "generated one for this run" in home.text
        assert "<script data-posthog-identity" in home.text
        first = identity_cookie(home)
        assert first is not None

        login = client.post("/login", data={"name": "ada"})
        assert login.status_code == 303
        snapshot = events(client, lambda s: "$create_alias" in str(s["groups"].get("ada", "")))
        anonymous = snapshot["cookie"]["anonymous_id"]
        (alias,) = [e for e in snapshot["groups"]["ada"] if e["event"] == "$create_alias"]
        assert alias["alias"] == anonymous
        assert snapshot["transitions"][0]["transition"] == "login"

        assert client.get("/page").status_code == 200
        events(
            client, lambda s: any(e["event"] == "Page Viewed" for e in s["groups"].get("ada", []))
        )

        logout = client.get("/logout")
        assert logout.status_code == 303
        after = events(
            client, lambda s: s["transitions"] and s["transitions"][0]["transition"] == "logout"
        )
        assert after["cookie"]["anonymous_id"] != anonymous
        assert after["cookie"]["user_hash"] is None
        assert "Events" in client.get("/events").text

    demo.wait_for_line(re.compile(r"\$create_alias distinct_id=ada alias=" + re.escape(anonymous)))
    demo.wait_for_line(re.compile(r"Page Viewed\" distinct_id=ada"))


def test_a_broken_login_form_asks_again(demo: Demo) -> None:
    with httpx.Client(base_url=demo.url) as client:
        response = client.post("/login", data={"name": "   "})
        assert response.status_code == 200
        assert "Please type a name." in response.text
        assert client.get("/nowhere").status_code == 404
