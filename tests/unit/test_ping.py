"""`ask`: one request to an upstream, against real servers on 127.0.0.1, and each way
it can fail named apart: an error status, refused, TLS, DNS, timeout, a closed connection.
"""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from posthog_identity.ping import Answer, ask
from posthog_identity.testing import Sink
from tests.helpers.faults import FaultyHost

FLAGS = b'{"token": "phc_test", "distinct_id": "someone"}'


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as running:
        yield running


@pytest.fixture
def faulty(request: pytest.FixtureRequest) -> Iterator[FaultyHost]:
    host = FaultyHost(str(request.param))
    yield host
    host.close()


@pytest.fixture
def self_signed(tmp_path: Path) -> Iterator[str]:
    """An https server on 127.0.0.1 whose certificate nobody trusts (made by openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def test_an_answer_names_its_status_and_server(sink: Sink) -> None:
    answer = ask("POST", f"{sink.url}/flags/?v=2", FLAGS, timeout=5)

    assert answer.ok
    assert answer.describe().startswith("200 OK (server: posthog-identity-sink")


def test_an_error_status_is_an_answer_that_is_not_ok(sink: Sink) -> None:
    answer = ask("GET", f"{sink.url}/static/array.js", None, timeout=5)

    assert (answer.status, answer.ok, answer.failure) == (404, False, None)
    assert answer.describe().startswith("404 Not Found (server: posthog-identity-sink")


@pytest.mark.parametrize(
    ("faulty", "told"),
    [
        ("refused", "connection refused: nothing listens at 127.0.0.1:"),
        ("hang", "timeout: no answer within 0.5s"),
        ("close", "closed without an answer"),
    ],
    ids=["refused", "timeout", "closed"],
    indirect=["faulty"],
)
def test_no_answer_says_why(faulty: FaultyHost, told: str) -> None:
    answer = ask("POST", f"{faulty.url}/flags/?v=2", FLAGS, timeout=0.5)

    assert (answer.status, answer.ok) == (None, False)
    assert told in answer.describe()


def test_https_spoken_to_a_plain_http_server_is_a_tls_failure(sink: Sink) -> None:
    url = sink.url.replace("http://", "https://")

    answer = ask("POST", f"{url}/flags/?v=2", FLAGS, timeout=5)

    assert answer.describe().startswith("TLS failure: the TLS handshake with 127.0.0.1:")
    assert "does it speak https on that port?" in answer.describe()


def test_an_untrusted_certificate_is_a_tls_failure(self_signed: str) -> None:
    answer = ask("GET", f"{self_signed}/", None, timeout=5)

    assert answer.describe().startswith("TLS failure: the certificate of 127.0.0.1 is not trusted")


def test_a_name_that_does_not_resolve_is_a_dns_failure() -> None:
    # .invalid never resolves (RFC 6761).
    answer = ask("GET", "https://posthog-identity-check.invalid/", None, timeout=5)

    assert answer.describe().startswith(
        "DNS failure: posthog-identity-check.invalid does not resolve"
    )


def test_a_url_that_cannot_be_asked_says_so() -> None:
    answer = ask("GET", "nonsense", None, timeout=1)

    assert answer.describe().startswith("not a URL that can be asked: nonsense")


@pytest.mark.parametrize(
    ("status", "told"),
    [(200, "200 OK (no Server header)"), (599, "599 Unknown (no Server header)")],
    ids=["known", "unknown-status"],
)
def test_describe_reads_any_status(status: int, told: str) -> None:
    assert Answer("http://x", status).describe() == told
