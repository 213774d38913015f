"""`posthog-identity sink`: a sink served from the command line, printing one line per
event and flags request (`format_event`), until SIGINT or SIGTERM.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from posthog.client import Client

from posthog_identity.testing import EXAMPLE_FLAG_DEFINITIONS, format_event
from posthog_identity.testing.cli import main
from tests.helpers.sink import EVENT, FLAGS_REQUEST, JS_EVENT, KEY, OTHER, PERSONAL, post_json, send

BEARER = {"Authorization": f"Bearer {PERSONAL}"}
LISTENING = re.compile(r"PostHog sink listening on (http://127\.0\.0\.1:\d+)")
TIME = r"\d\d:\d\d:\d\d"


class LineWriter:
    """A stdout that hands each complete line to a queue."""

    def __init__(self, lines: queue.Queue[str]) -> None:
        self.lines = lines
        self.partial = ""

    def write(self, text: str) -> int:
        *complete, self.partial = (self.partial + text).split("\n")
        for line in complete:
            self.lines.put(line)
        return len(text)

    def flush(self) -> None:
        pass


def run_main(
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    drive: Callable[[str, queue.Queue[str]], None],
) -> int:
    """Run `main` in this (the main) thread; `drive` talks to it, then it gets SIGINT."""
    lines: queue.Queue[str] = queue.Queue()
    monkeypatch.setattr(sys, "stdout", LineWriter(lines))
    failures: list[BaseException] = []

    def driver() -> None:
        try:
            match = LISTENING.fullmatch(lines.get(timeout=10))
        except queue.Empty as exc:  # main never listened: nothing to stop
            failures.append(exc)
            return
        try:
            assert match is not None
            drive(match[1], lines)
        except BaseException as exc:
            failures.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=driver)
    thread.start()
    try:
        code = main(argv)
    finally:
        thread.join(timeout=30)
    if failures:
        raise failures[0]
    return code


def test_main_prints_one_line_per_event_and_flags_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    printed: list[str] = []

    def drive(url: str, lines: queue.Queue[str]) -> None:
        ph = Client(KEY, host=url, sync_mode=True)
        try:
            ph.capture("signup", distinct_id="user-1")
            ph.alias(previous_id="user-1", distinct_id="anon-1")
        finally:
            ph.shutdown()
        identify = {
            "event": "$identify",
            "properties": {"distinct_id": "user-1", "$anon_distinct_id": "anon-1", "token": KEY},
        }
        post_json(url + "/e/", {"api_key": KEY, "batch": [identify]})
        post_json(url + "/flags/?v=2", FLAGS_REQUEST)
        printed.extend(lines.get(timeout=10) for _ in range(4))

    assert run_main(monkeypatch, ["--port", "0"], drive) == 0
    patterns = [
        rf"{TIME} signup distinct_id=user-1",
        rf"{TIME} \$create_alias distinct_id=user-1 alias=anon-1",
        rf"{TIME} \$identify distinct_id=user-1 \$anon_distinct_id=anon-1",
        rf"{TIME} flags\? distinct_id=anon-1",
    ]
    assert [bool(re.fullmatch(p, line)) for p, line in zip(patterns, printed, strict=True)] == [
        True
    ] * 4, printed


def test_main_writes_jsonl_and_serves_the_static_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, static_dir: Path
) -> None:
    jsonl = tmp_path / "events.jsonl"
    served: list[bytes] = []

    def drive(url: str, lines: queue.Queue[str]) -> None:
        post_json(url + "/e/", EVENT)
        served.append(send(url + "/static/1.449.2/surveys.js", method="GET").body)

    argv = ["--port", "0", "--jsonl", str(jsonl), "--static-dir", str(static_dir)]
    assert run_main(monkeypatch, argv, drive) == 0
    assert [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()] == [EVENT]
    assert served == [b"/* surveys */"]


def test_main_restores_the_signal_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    run_main(monkeypatch, ["--port", "0"], lambda url, lines: None)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.parametrize("problem", ["port-taken", "static-dir-missing", "jsonl-is-a-directory"])
def test_main_that_cannot_start_says_why_and_returns_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, problem: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        argv = {
            "port-taken": ["--port", str(taken.getsockname()[1])],
            "static-dir-missing": ["--port", "0", "--static-dir", str(tmp_path / "no")],
            "jsonl-is-a-directory": ["--port", "0", "--jsonl", str(tmp_path)],
        }[problem]
        assert main(argv) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("posthog-identity sink: cannot start: ")


def test_main_subprocess_prints_events_and_stops_on_sigterm() -> None:
    code = "from posthog_identity.testing.cli import main; raise SystemExit(main(['--port','0']))"
    with subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        watchdog = threading.Timer(30, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            match = LISTENING.fullmatch(proc.stdout.readline().rstrip("\n"))
            assert match is not None
            post_json(match[1] + "/e/", [EVENT, OTHER])
            printed = [proc.stdout.readline().rstrip("\n") for _ in range(2)]
            proc.send_signal(signal.SIGTERM)
            rest, err = proc.communicate(timeout=20)
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    assert proc.returncode == 0
    assert re.fullmatch(rf"{TIME} signup distinct_id=user-1", printed[0])
    assert re.fullmatch(rf"{TIME} login distinct_id=user-2", printed[1])
    assert (rest, err) == ("", "")


@pytest.mark.parametrize(
    ("event", "line"),
    [
        pytest.param(EVENT, "signup distinct_id=user-1", id="posthog-python"),
        pytest.param(JS_EVENT, "$pageview distinct_id=anon-1", id="posthog-js"),
        pytest.param(
            {"event": "$create_alias", "distinct_id": "u", "properties": {"alias": "a"}},
            "$create_alias distinct_id=u alias=a",
            id="alias",
        ),
        pytest.param(
            {"event": "$identify", "properties": {"distinct_id": "u", "$anon_distinct_id": "a"}},
            "$identify distinct_id=u $anon_distinct_id=a",
            id="identify",
        ),
        pytest.param(
            {"event": "$identify", "properties": {"distinct_id": "u"}},
            "$identify distinct_id=u",
            id="identify-without-anonymous-id",
        ),
        pytest.param(
            {"event": "odd name", "distinct_id": "line\nbreak", "properties": []},
            'odd name" distinct_id="line\\nbreak"',
            id="escaped",
        ),
        pytest.param(
            {"event": "x", "distinct_id": "Jos\u00e9\u2028"},
            'x distinct_id="Jos\\u00e9\\u2028"',
            id="non-ascii",
        ),
        pytest.param({"event": "x", "distinct_id": 42}, "x distinct_id=42", id="number"),
    ],
)
def test_format_event_is_one_line(event: dict[str, Any], line: str) -> None:
    formatted = format_event(event)
    assert re.fullmatch(TIME + " .*", formatted)
    assert formatted.endswith(line)
    assert len(formatted.splitlines()) == 1


def test_main_example_flags_serves_the_example_definitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served: list[Any] = []

    def drive(url: str, lines: queue.Queue[str]) -> None:
        reply = send(f"{url}/flags/definitions?token={KEY}", method="GET", headers=BEARER)
        served.append(reply.json()["flags"])

    assert run_main(monkeypatch, ["--port", "0", "--example-flags"], drive) == 0
    assert served == [list(EXAMPLE_FLAG_DEFINITIONS)]
