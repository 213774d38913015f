"""The first-party proxy under real servers (uvicorn, gunicorn, waitress), to a recording upstream.

Each server runs `tests.sites.proxy` with ``POSTHOG_IDENTITY_PROXY_PATH=/ingest``,
forwarding to a `RecordingUpstream` on 127.0.0.1. Requests go out through
`http.client`, which sends paths as written (``..`` and ``%2F`` included) and
lets a test send a body piece by piece.
"""

from __future__ import annotations

import http.client
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.servers import (
    Started,
    app_command,
    check_stopped,
    server_environment,
    start_process,
    stop_process,
)
from tests.helpers.upstream import UPSTREAM_SERVER, RecordingUpstream, recording_upstream

SITE = "tests.sites.proxy"
KINDS = ["uvicorn", "gunicorn", "waitress"]
TIMEOUT = 10.0


def command(kind: str, port: int) -> list[str]:
    if kind == "waitress":
        listen = f"--listen=127.0.0.1:{port}"
        return [sys.executable, "-m", "waitress", listen, "--call", f"{SITE}:wsgi_factory"]
    return app_command(kind, port, SITE)


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with recording_upstream() as running:
        yield running


@pytest.fixture(scope="module", params=KINDS)
def server(
    request: pytest.FixtureRequest,
    upstream: RecordingUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Started]:
    kind = str(request.param)
    env = server_environment(upstream.url)
    env["POSTHOG_IDENTITY_PROXY_PATH"] = "/ingest"
    log_dir: Path = tmp_path_factory.mktemp(f"proxy-{kind}")
    # waitress handles no SIGTERM: Ctrl-C's SIGINT stops it gracefully.
    how = signal.SIGINT if kind == "waitress" else signal.SIGTERM
    started = start_process(kind, lambda port: command(kind, port), env, log_dir, how=how)
    yield started
    check_stopped(kind, started.log, stop_process(started.process, how), how=how)


@pytest.fixture(autouse=True)
def _fresh(upstream: RecordingUpstream) -> None:
    upstream.reset()


def connect(server: Started) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)


def request(
    server: Started, method: str, target: str, body: bytes | None = None
) -> http.client.HTTPResponse:
    connection = connect(server)
    connection.request(method, target, body=body, headers={"Content-Type": "text/plain"})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


# -- what comes back ------------------------------------------------------------------


def test_a_proxied_answer_carries_one_date_and_the_app_servers_server(
    server: Started, upstream: RecordingUpstream
) -> None:
    response = request(server, "GET", "/ingest/flags/?v=2")
    assert response.status == 200
    assert len(response.headers.get_all("Date") or []) == 1
    [server_header] = response.headers.get_all("Server") or []
    assert UPSTREAM_SERVER not in server_header


# -- which paths are forwarded --------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/ingest/static/../../etc/passwd",
        "/ingest/./e/",
        "/ingest/e/..",
        "/ingest/%2e%2e/x",
        "/ingest/%2E%2E/x",
        "/ingest/.%2e/x",
        "/ingest/%252e%252e/x",
        "/ingest/static/a%2fb",
        "/ingest/static/a%2Fb",
    ],
    ids=[
        "dot-dot",
        "dot",
        "trailing-dot-dot",
        "encoded-dot-dot",
        "encoded-upper",
        "half-encoded",
        "double-encoded",
        "encoded-slash",
        "encoded-slash-upper",
    ],
)
def test_a_path_with_dot_segments_or_an_encoded_slash_gets_400_and_is_not_forwarded(
    server: Started, upstream: RecordingUpstream, target: str
) -> None:
    response = request(server, "GET", target)
    assert response.status == 400
    assert upstream.received == []


def test_posthog_pythons_v1_capture_path_is_forwarded_like_any_other(
    server: Started, upstream: RecordingUpstream
) -> None:
    batch = b'{"batch":[{"event":"$pageview","distinct_id":"d"}]}'
    response = request(server, "POST", "/ingest/i/v1/analytics/events?x=1", batch)
    assert response.status == 200
    [received] = upstream.received
    assert (received.method, received.target, received.body) == (
        "POST",
        "/i/v1/analytics/events?x=1",
        batch,
    )
