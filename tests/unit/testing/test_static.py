"""The sink's `/static/` files: served from its directory with their content type,
and nothing outside that directory.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from posthog_identity.testing import Sink
from tests.helpers.sink import Reply, send, send_raw


def get_raw(sink: Sink, target: str) -> Reply:
    # By hand, so that no client normalises `..` or percent-escapes first.
    return send_raw(sink, f"GET {target} HTTP/1.0\r\n\r\n".encode())


@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("/static/array.js", "/* array */"),
        ("/static/sub/inner.js", "/* inner */"),
        ("/static/surveys.js?v=1.449.2", "/* surveys */"),
        ("/static/1.449.2/surveys.js", "/* surveys */"),
        ("/static/1.449.2/recorder.js", "/* recorder 1.449.2 */"),
        ("/static/recorder.js", "/* recorder, unversioned */"),
        ("/static/alias.js", "/* array */"),
        ("/static/%61rray.js", "/* array */"),
    ],
    ids=[
        "file",
        "nested",
        "query-ignored",
        "version-stripped",
        "versioned-file-first",
        "unversioned",
        "symlink-inside",
        "percent-encoded",
    ],
)
def test_static_serves_files_from_the_directory(static_sink: Sink, target: str, body: str) -> None:
    reply = get_raw(static_sink, target)
    assert reply.status == 200
    assert reply.body.decode() == body


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("array.js", "application/javascript; charset=utf-8"),
        ("data.json", "application/json"),
        ("style.css", "text/css; charset=utf-8"),
        ("image.png", "image/png"),
        ("blob.unknownext", "application/octet-stream"),
    ],
)
def test_static_files_get_their_content_type(
    static_sink: Sink, name: str, content_type: str
) -> None:
    reply = send(static_sink.url + "/static/" + name, method="GET")
    assert reply.headers["Content-Type"] == content_type
    assert reply.headers["Content-Length"] == str(len(reply.body))
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "target",
    [
        "/static/../secret.txt",
        "/static/../sink.py",
        "/static/%2e%2e/secret.txt",
        "/static/%2E%2E%2Fsecret.txt",
        "/static/sub/../../secret.txt",
        "/static/1.449.2/../../secret.txt",
        "/static/./array.js",
        "/static/..%5csecret.txt",
        "/static/array.js%00.txt",
        "ABSOLUTE",
        "ENCODED-ABSOLUTE",
        "/static/escape.txt",
        "/static/link-out/secret.txt",
        "/static/loop",
        "/static/sub",
        "/static/",
        "/static/missing.js",
        "/static/notaversion/surveys.js",
    ],
    ids=[
        "dotdot",
        "dotdot-sink-py",
        "encoded-dotdot",
        "encoded-dotdot-slash",
        "nested-dotdot",
        "version-dotdot",
        "dot",
        "backslash",
        "nul",
        "absolute",
        "encoded-absolute",
        "symlinked-file-outside",
        "symlinked-dir-outside",
        "symlink-loop",
        "directory",
        "empty",
        "missing",
        "not-a-version",
    ],
)
def test_static_refuses_paths_outside_its_files(
    static_sink: Sink, static_dir: Path, target: str
) -> None:
    secret = str(static_dir.parent / "secret.txt")
    if target == "ABSOLUTE":
        target = "/static/" + secret
    elif target == "ENCODED-ABSOLUTE":
        target = "/static/" + urllib.parse.quote(secret, safe="")
    reply = get_raw(static_sink, target)

    assert reply.status == 404
    assert reply.json()["code"] == "not_found"
    assert b"classified" not in reply.body


def test_static_without_a_directory_is_404(sink: Sink) -> None:
    assert send(sink.url + "/static/array.js", method="GET").status == 404


def test_static_file_that_cannot_be_opened_is_404(
    static_sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    def vanished(self: Path, *args: Any, **kwargs: Any) -> Any:
        raise FileNotFoundError(self)

    monkeypatch.setattr(Path, "open", vanished)
    assert send(static_sink.url + "/static/array.js", method="GET").status == 404


def test_static_dir_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        Sink(static_dir=tmp_path / "missing")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_static_file_carries_one_date_and_one_server_header(
    static_sink: Sink, method: str
) -> None:
    reply = send(static_sink.url + "/static/array.js", method=method)
    assert reply.status == 200
    assert len(reply.headers.get_all("Date")) == 1
    assert len(reply.headers.get_all("Server")) == 1
