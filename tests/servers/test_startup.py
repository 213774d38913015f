"""What a real server's log says when the middleware starts: a short secret is
warned about once, naming the variable and its length, however many requests follow."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from posthog_identity.testing import Sink
from tests.helpers.servers import read_log, server_environment, start_app, stop_process


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
def test_a_short_secret_is_warned_once_in_the_servers_log(kind: str, tmp_path: Path) -> None:
    with Sink() as sink:
        env = {**server_environment(sink.url), "POSTHOG_IDENTITY_SECRET": "short"}
        server = start_app(kind, sink, tmp_path, env=env)
        try:
            with httpx.Client(base_url=server.url) as client:
                replies = [client.get("/whoami") for _ in range(3)]
        finally:
            killed = stop_process(server.process)
        log = read_log(server.log)

    assert not killed
    assert [reply.status_code for reply in replies] == [200, 200, 200], "still accepted"
    warned = [line for line in log.splitlines() if "POSTHOG_IDENTITY_SECRET" in line]
    assert len(warned) == 1, log
    assert "the newest secret has 5 characters; use at least 32" in warned[0]
