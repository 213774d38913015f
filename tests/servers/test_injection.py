"""The HTML snippet injection through real servers: gunicorn (gthread), granian and uvicorn.

Each server runs `tests.sites.html_pages` in a subprocess (one per module and server
kind), configured by environment variables like `tests.servers.test_lifecycle`, and
started, stopped and checked with `tests.helpers.servers`. Requests go over a raw socket with a
minimal HTTP/1.1 client: the body is framed by the response's own
Content-Length or chunked encoding, and a second request on the same
keep-alive connection must parse, so a wrong Content-Length cannot hide (httpx
would). A declared length too long makes both servers close the connection
early; one too short makes uvicorn (h11) close it, while gunicorn silently cuts
the body at the declared length: that is caught by comparing the whole body
with the app's page plus the snippet. What the app produced is fetched under
``/raw``, a path the middleware excludes, through the same server.
"""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from posthog_identity.testing import Sink
from tests.helpers.pages import (
    MARKER,
    html5_parent_of_snippet,
    snippet_options,
    the_snippet,
)
from tests.helpers.project import API_KEY
from tests.helpers.servers import Server, checking_test, serving, start_app
from tests.helpers.wire import COOKIE, read_cookie
from tests.sites import html_pages as html_apps
from tests.sites.html_pages import PAGES, RAW, READY_BODY, READY_PATH

SOCKET_TIMEOUT = 10.0

# ---------------------------------------------------------------------------
# Servers


def _start_server(kind: str, sink: Sink, log_dir: Path) -> Server:
    """`start_app` for the HTML pages site."""
    # The readiness probe asks READY_PATH ("/whoami"), which the HTML apps answer.
    return start_app(kind, sink, log_dir, "tests.sites.html_pages")


@pytest.fixture(scope="module", params=["gunicorn", "granian", "uvicorn"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    kind = str(request.param)
    with Sink() as sink:
        yield from serving(_start_server(kind, sink, tmp_path_factory.mktemp(f"html-{kind}")))


@pytest.fixture(autouse=True)
def _no_server_errors(server: Server) -> Iterator[None]:
    """Each test fails if the server logged a traceback while it ran."""
    yield from checking_test(server)


# ---------------------------------------------------------------------------
# A raw HTTP/1.1 client


class ConnectionClosed(Exception):
    """The server closed the connection before a whole response arrived."""


@dataclass
class RawReply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def headers_named(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        values = self.headers_named(name)
        assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
        return values[0] if values else None

    @property
    def chunked(self) -> bool:
        return "chunked" in (self.header("transfer-encoding") or "").lower()

    @property
    def identity_cookies(self) -> list[str]:
        found = []
        for header in self.headers_named("set-cookie"):
            name, _, rest = header.partition("=")
            if name.strip() == COOKIE:
                found.append(rest.split(";", 1)[0])
        return found


class RawConnection:
    """One keep-alive connection; frames each body exactly as the response declares."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None
        assert parts.port is not None
        self.host = f"{parts.hostname}:{parts.port}"
        self.sock = socket.create_connection((parts.hostname, parts.port), SOCKET_TIMEOUT)
        self.buffer = bytearray()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> RawReply:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        return self._read_response(method)

    def get(self, path: str, cookie: str | None = None) -> RawReply:
        return self.request("GET", path, {"Cookie": f"{COOKIE}={cookie}"} if cookie else None)

    @property
    def pending(self) -> bytes:
        """Bytes received beyond the last response (there should be none)."""
        return bytes(self.buffer)

    def assert_reusable(self) -> None:
        """The last response ended where it said: the next one on this connection parses."""
        assert self.pending == b"", f"bytes after the response: {self.pending[:200]!r}"
        follow = self.get(RAW + READY_PATH)
        assert (follow.status, follow.body) == (200, READY_BODY), follow

    def _fill(self) -> None:
        data = self.sock.recv(256 * 1024)
        if not data:
            raise ConnectionClosed(f"closed with {len(self.buffer)} bytes unread")
        self.buffer += data

    def _read_until(self, separator: bytes) -> bytes:
        start = 0
        while (end := self.buffer.find(separator, start)) < 0:
            start = max(0, len(self.buffer) - len(separator) + 1)
            self._fill()
        data = bytes(self.buffer[:end])
        del self.buffer[: end + len(separator)]
        return data

    def _read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def _read_response(self, method: str) -> RawReply:
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        version, status, _ = (status_line + " ").split(" ", 2)
        assert version == "HTTP/1.1", f"not an HTTP/1.1 status line: {status_line!r}"
        headers = [
            (name.strip(), value.strip())
            for name, _, value in (line.partition(":") for line in header_lines)
        ]
        reply = RawReply(int(status), headers, b"")
        if method == "HEAD" or reply.status in (204, 304) or reply.status < 200:
            return reply
        if reply.chunked:
            assert reply.header("content-length") is None, "both chunked and Content-Length"
            reply.body = self._read_chunked()
        elif (length := reply.header("content-length")) is not None:
            reply.body = self._read_exact(int(length))
        else:
            pytest.fail(f"a response delimited by closing the connection: {headers}")
        return reply

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size = int(self._read_until(b"\r\n").split(b";", 1)[0], 16)
            if size == 0:
                while self._read_until(b"\r\n"):  # trailers, up to an empty line
                    pass
                return b"".join(parts)
            parts.append(self._read_exact(size))
            assert self._read_exact(2) == b"\r\n", "a chunk longer than its size"


@pytest.fixture
def connection(server: Server) -> Iterator[RawConnection]:
    with RawConnection(server.url) as opened:
        yield opened


# ---------------------------------------------------------------------------
# Reading the snippet


def insertion_point(document: bytes) -> int:
    """Where the snippet belongs: before the first ``</head>``, else ``<body``."""
    found = re.search(rb"</head[\s>]|<body[\s>/]", document, re.IGNORECASE)
    assert found is not None
    return found.start()


# ---------------------------------------------------------------------------
# Injected pages

INJECTED = ["/fixed", "/chunked", "/streamed", "/upper", "/nohead"]
WITH_LENGTH = [path for path in INJECTED if PAGES[path].content_length is not None]
WITHOUT_LENGTH = [path for path in INJECTED if PAGES[path].content_length is None]


@pytest.mark.parametrize("path", INJECTED)
def test_injected_page_carries_exactly_one_snippet(connection: RawConnection, path: str) -> None:
    reply = connection.get(path)

    assert reply.status == 200
    assert reply.body.count(b"<script data-posthog-identity") == 1
    assert reply.body.count(MARKER) == 1


@pytest.mark.parametrize("path", WITH_LENGTH)
def test_injected_page_declares_the_grown_content_length(
    connection: RawConnection, path: str
) -> None:
    reply = connection.get(path)

    assert not reply.chunked
    assert reply.header("content-length") == str(len(reply.body))
    assert len(reply.body) == len(PAGES[path].body) + len(the_snippet(reply.body))
    connection.assert_reusable()


@pytest.mark.parametrize("path", WITHOUT_LENGTH)
def test_injected_page_without_content_length_gets_none_added(
    connection: RawConnection, path: str
) -> None:
    reply = connection.get(path)

    assert reply.header("content-length") is None
    assert reply.chunked
    connection.assert_reusable()


@pytest.mark.parametrize("path", INJECTED)
def test_injected_page_is_the_app_page_with_the_snippet_at_the_insertion_point(
    connection: RawConnection, path: str
) -> None:
    document = PAGES[path].body

    body = connection.get(path).body

    snippet = the_snippet(body)
    assert body.index(snippet) == insertion_point(document)
    assert body.replace(snippet, b"", 1) == document


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/fixed", id="fixed"),
        pytest.param("/upper", id="upper-case-head"),
        pytest.param("/streamed", id="streamed-split-head-close"),
        pytest.param("/chunked", id="chunked"),
        pytest.param("/nohead", id="no-head-before-body"),
    ],
)
def test_snippet_is_inside_head_per_html5_parser(connection: RawConnection, path: str) -> None:
    body = connection.get(path).body

    assert html5_parent_of_snippet(body) == "head"


def test_snippet_on_page_without_head_comes_before_body_content(
    connection: RawConnection,
) -> None:
    body = connection.get("/nohead").body

    snippet = the_snippet(body)
    assert body == html_apps.NOHEAD_DOCUMENT.replace(b"<body>", snippet + b"<body>", 1)


@pytest.mark.parametrize("path", ["/fixed", "/chunked", "/streamed"])
def test_new_visitor_bootstrap_id_is_the_new_cookie_anonymous_id(
    connection: RawConnection, path: str
) -> None:
    reply = connection.get(path)

    [cookie] = reply.identity_cookies
    identity = snippet_options(reply.body)["identity"]
    assert identity == {
        "anonymous": read_cookie(cookie).anonymous_id,
        "user": None,
        "signedIn": False,
    }
    assert uuid.UUID(identity["anonymous"])


@pytest.mark.parametrize("path", ["/fixed", "/streamed"])
def test_returning_visitor_bootstrap_id_is_the_cookie_anonymous_id(
    server: Server, path: str
) -> None:
    with RawConnection(server.url) as first:
        [cookie] = first.get(path).identity_cookies
    with RawConnection(server.url) as again:
        reply = again.get(path, cookie=cookie)

    assert reply.identity_cookies == []
    anonymous = snippet_options(reply.body)["identity"]["anonymous"]
    assert anonymous == read_cookie(cookie).anonymous_id


def test_snippet_carries_the_project_key(connection: RawConnection) -> None:
    options = snippet_options(connection.get("/fixed").body)

    assert options["token"] == API_KEY
    assert options["nonce"] is None


# ---------------------------------------------------------------------------
# Responses left alone


@dataclass(frozen=True)
class Skip:
    path: str
    method: str = "GET"
    page: str | None = None  # the page requested, when not `path`

    @property
    def target(self) -> str:
        return self.page or self.path


SKIPS = [
    pytest.param(Skip("/head-method", "HEAD", "/fixed"), id="HEAD"),
    pytest.param(Skip("/nocontent"), id="204"),
    pytest.param(Skip("/partial"), id="206"),
    pytest.param(Skip("/notmodified"), id="304"),
    pytest.param(Skip("/redirect"), id="302-with-html"),
    pytest.param(Skip("/gzip"), id="content-encoding-gzip"),
    pytest.param(Skip("/attachment"), id="content-disposition-attachment"),
    pytest.param(Skip("/json"), id="application-json"),
    pytest.param(Skip("/xhtml"), id="application-xhtml-xml"),
]


def _expected_body(skip: Skip) -> bytes:
    page = PAGES[skip.target]
    return b"" if skip.method == "HEAD" else page.body


@pytest.mark.parametrize("skip", SKIPS)
def test_skipped_response_body_is_byte_for_byte_the_app_body(
    connection: RawConnection, skip: Skip
) -> None:
    app = connection.request(skip.method, RAW + skip.target)

    reply = connection.request(skip.method, skip.target)

    assert reply.status == app.status == PAGES[skip.target].status
    assert reply.body == app.body == _expected_body(skip)
    assert MARKER not in reply.body
    connection.assert_reusable()


@pytest.mark.parametrize("skip", SKIPS)
def test_skipped_response_keeps_the_app_content_length(
    connection: RawConnection, skip: Skip
) -> None:
    app = connection.request(skip.method, RAW + skip.target)

    reply = connection.request(skip.method, skip.target)

    assert reply.header("content-length") == app.header("content-length")
    assert reply.header("transfer-encoding") == app.header("transfer-encoding")
    declared = PAGES[skip.target].content_length
    if declared is not None:
        assert reply.header("content-length") == declared
    connection.assert_reusable()


@pytest.mark.parametrize("skip", SKIPS)
def test_skipped_response_still_sets_the_identity_cookie(
    connection: RawConnection, skip: Skip
) -> None:
    reply = connection.request(skip.method, skip.target)

    [cookie] = reply.identity_cookies
    assert uuid.UUID(read_cookie(cookie).anonymous_id)


# ---------------------------------------------------------------------------
# Shared-cacheable pages, CSP nonces, big pages


def test_public_page_gets_a_snippet_without_identity(connection: RawConnection) -> None:
    reply = connection.get("/public")

    assert b'"identity":null' in the_snippet(reply.body)
    assert snippet_options(reply.body)["identity"] is None
    assert reply.header("content-length") == str(len(reply.body))


def test_public_page_sets_no_cookie_for_a_new_visitor(connection: RawConnection) -> None:
    reply = connection.get("/public")

    assert reply.status == 200
    assert reply.headers_named("set-cookie") == []


def test_public_page_carries_no_id_of_a_returning_visitor(server: Server) -> None:
    with RawConnection(server.url) as first:
        [cookie] = first.get("/fixed").identity_cookies
    anonymous = read_cookie(cookie).anonymous_id.encode()
    with RawConnection(server.url) as again:
        reply = again.get("/public", cookie=cookie)

    assert anonymous not in reply.body
    assert reply.headers_named("set-cookie") == []


def test_csp_script_nonce_is_reused_on_our_script(connection: RawConnection) -> None:
    reply = connection.get("/csp")

    assert the_snippet(reply.body).startswith(b'<script data-posthog-identity nonce="abc123">')
    assert snippet_options(reply.body)["nonce"] == "abc123"
    assert reply.header("content-length") == str(len(reply.body))


def test_big_page_head_is_beyond_the_lookahead() -> None:
    # A guard on the page itself, so the next test means what it says.
    big_document = html_apps.BIG_DOCUMENT
    assert big_document.index(b"</head>") > html_apps.BIG_HEAD_PADDING > 64 * 1024
    assert len(big_document) > 5_000_000


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/big", id="content-length"),
        pytest.param("/big-chunked", id="chunked"),
    ],
)
def test_big_page_passes_through_untouched(connection: RawConnection, path: str) -> None:
    big_document = html_apps.BIG_DOCUMENT

    reply = connection.get(path)

    assert reply.status == 200
    assert len(reply.body) == len(big_document)
    assert reply.body == big_document
    assert reply.header("content-length") == PAGES[path].content_length
    connection.assert_reusable()
