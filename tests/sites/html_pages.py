"""HTML pages for the injection tests through real servers (gunicorn and uvicorn).

One table of pages, `PAGES`, served by a WSGI app and an ASGI app that both
sit behind posthog_identity's `IdentityMiddleware`, configured from the
environment like `tests.sites.basic`. Every page is also served under ``/raw``, an
excluded path, so a test can fetch exactly what the app produced through the
same server, without the middleware.

How a page's body leaves the app (`Page.mode`):

- ``fixed``: one piece (WSGI: a one-item list; ASGI: Starlette's `Response`);
- ``chunked``: a few pieces (WSGI: a list; ASGI: several ``http.response.body``
  messages with ``more_body``);
- ``streamed``: many small pieces from a generator (WSGI: a generator; ASGI:
  Starlette's `StreamingResponse` over an async generator).

Whether a page declares a Content-Length is in its headers, never added here.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

from starlette.responses import Response, StreamingResponse

from posthog_identity.asgi import IdentityMiddleware as ASGIIdentityMiddleware
from posthog_identity.settings import Settings
from posthog_identity.wsgi import IdentityMiddleware as WSGIIdentityMiddleware
from tests.sites.basic import serve_lifespan

Mode = Literal["fixed", "chunked", "streamed"]

#: Excluded from the middleware: ``/raw/<page>`` is the app's own response.
RAW = "/raw"
#: Answers 200 ``ok``; `tests.servers.test_lifecycle`' readiness probe asks for it.
READY_PATH = "/whoami"
READY_BODY = b"ok"

HTML = "text/html; charset=utf-8"

DOCUMENT = b"""\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Injection test</title>
<link rel="stylesheet" href="/static/site.css">
</head>
<body class="page">
<header><h1>Hello</h1></header>
<p>Some content &amp; more content.</p>
</body>
</html>
"""

UPPER_DOCUMENT = b"""\
<!DOCTYPE HTML>
<HTML>
<HEAD>
<TITLE>Upper case</TITLE>
</HEAD>
<BODY>
<P>SHOUTING</P>
</BODY>
</HTML>
"""

NOHEAD_DOCUMENT = b"<html><body>no head</body></html>"

REDIRECT_DOCUMENT = (
    b'<html><head><title>Moved</title></head><body><a href="/fixed">Moved here</a></body></html>'
)

XHTML_DOCUMENT = b"""\
<?xml version="1.0" encoding="utf-8"?>
<html xmlns="http://www.w3.org/1999/xhtml">
<head><title>XHTML</title></head>
<body><p>served as XML</p></body>
</html>
"""

JSON_DOCUMENT = json.dumps({"html": DOCUMENT.decode()}).encode()

# mtime=0: the same bytes in every process.
GZIP_DOCUMENT = gzip.compress(DOCUMENT, mtime=0)

# Partial content: the first bytes of the document, `</head>` included.
PARTIAL_END = DOCUMENT.index(b"</head>") + len(b"</head>") + 10
PARTIAL_DOCUMENT = DOCUMENT[:PARTIAL_END]

#: ~5 MB whose `</head>` comes after 200 KB: beyond the default 64 KiB look-ahead.
BIG_HEAD_PADDING = 200 * 1024
BIG_DOCUMENT = b"".join(
    (
        b"<!DOCTYPE html>\n<html>\n<head>\n<title>Big</title>\n<!-- ",
        b"p" * BIG_HEAD_PADDING,
        b" -->\n</head>\n<body>\n",
        b"<p>" + b"b" * (5 * 1024 * 1024) + b"</p>\n",
        b"</body>\n</html>\n",
    )
)
BIG_PIECE = 64 * 1024


def _pieces(data: bytes, size: int) -> tuple[bytes, ...]:
    return tuple(data[i : i + size] for i in range(0, len(data), size))


def _split_head_close(document: bytes, size: int) -> tuple[bytes, ...]:
    """Small pieces, one of them ending in ``</he`` and the next starting ``ad>``."""
    cut = document.index(b"</head>") + len(b"</he")
    return _pieces(document[:cut], size) + _pieces(document[cut:], size)


def _length(body: bytes) -> tuple[str, str]:
    return ("Content-Length", str(len(body)))


@dataclass(frozen=True)
class Page:
    status: int
    headers: tuple[tuple[str, str], ...]
    chunks: tuple[bytes, ...]
    mode: Mode = "fixed"

    @property
    def body(self) -> bytes:
        """Everything the app sends as the body."""
        return b"".join(self.chunks)

    @property
    def content_length(self) -> str | None:
        """The Content-Length the app declares, if any."""
        for name, value in self.headers:
            if name.lower() == "content-length":
                return value
        return None


def _fixed(body: bytes, *headers: tuple[str, str], status: int = 200) -> Page:
    return Page(status, (*headers, _length(body)), (body,))


STREAMED_CHUNKS = _split_head_close(DOCUMENT, 7)

PAGES: dict[str, Page] = {
    # Injected.
    "/fixed": _fixed(DOCUMENT, ("Content-Type", HTML)),
    "/chunked": Page(200, (("Content-Type", HTML),), _pieces(DOCUMENT, 60), "chunked"),
    "/streamed": Page(200, (("Content-Type", HTML),), STREAMED_CHUNKS, "streamed"),
    "/upper": _fixed(UPPER_DOCUMENT, ("Content-Type", "TEXT/HTML; charset=utf-8")),
    "/nohead": _fixed(NOHEAD_DOCUMENT, ("Content-Type", HTML)),
    "/csp": _fixed(
        DOCUMENT,
        ("Content-Type", HTML),
        ("Content-Security-Policy", "script-src 'nonce-abc123' 'strict-dynamic'"),
    ),
    "/public": _fixed(DOCUMENT, ("Content-Type", HTML), ("Cache-Control", "public, max-age=60")),
    # Left alone: the head is found beyond the look-ahead.
    "/big": Page(
        200,
        (("Content-Type", HTML), _length(BIG_DOCUMENT)),
        _pieces(BIG_DOCUMENT, BIG_PIECE),
        "streamed",
    ),
    "/big-chunked": Page(
        200, (("Content-Type", HTML),), _pieces(BIG_DOCUMENT, BIG_PIECE), "streamed"
    ),
    # Left alone: every one of these would be injected but for one skip rule.
    "/nocontent": Page(204, (("Content-Type", HTML),), ()),
    "/partial": _fixed(
        PARTIAL_DOCUMENT,
        ("Content-Type", HTML),
        ("Content-Range", f"bytes 0-{PARTIAL_END - 1}/{len(DOCUMENT)}"),
        status=206,
    ),
    "/notmodified": Page(304, (("Content-Type", HTML), ("ETag", '"v1"')), ()),
    "/redirect": _fixed(
        REDIRECT_DOCUMENT, ("Content-Type", HTML), ("Location", "/fixed"), status=302
    ),
    "/gzip": _fixed(GZIP_DOCUMENT, ("Content-Type", HTML), ("Content-Encoding", "gzip")),
    "/attachment": _fixed(
        DOCUMENT,
        ("Content-Type", HTML),
        ("Content-Disposition", "attachment; filename=x.html"),
    ),
    "/json": _fixed(JSON_DOCUMENT, ("Content-Type", "application/json")),
    "/xhtml": _fixed(XHTML_DOCUMENT, ("Content-Type", "application/xhtml+xml; charset=utf-8")),
    READY_PATH: _fixed(READY_BODY, ("Content-Type", "text/plain; charset=utf-8")),
}

NOT_FOUND = _fixed(b"not found", ("Content-Type", "text/plain; charset=utf-8"), status=404)


def page_for(path: str) -> Page:
    if path.startswith(RAW + "/"):
        path = path[len(RAW) :]
    return PAGES.get(path, NOT_FOUND)


def _status_line(status: int) -> str:
    return f"{status} {HTTPStatus(status).phrase}"


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Any:
    page = page_for(environ.get("PATH_INFO", ""))
    start_response(_status_line(page.status), list(page.headers))
    if page.mode == "streamed":

        def generate() -> Iterator[bytes]:
            yield from page.chunks

        return generate()
    return list(page.chunks)


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    assert scope["type"] == "http"
    page = page_for(scope["path"])
    headers = dict(page.headers)
    if page.mode == "streamed":

        async def generate() -> AsyncIterator[bytes]:
            for chunk in page.chunks:
                yield chunk

        await StreamingResponse(generate(), page.status, headers)(scope, receive, send)
    elif page.mode == "fixed":
        await Response(page.body, page.status, headers)(scope, receive, send)
    else:
        await send(
            {
                "type": "http.response.start",
                "status": page.status,
                "headers": [(k.lower().encode(), v.encode()) for k, v in page.headers],
            }
        )
        for chunk in page.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _settings() -> Settings:
    return Settings.from_env(exclude_paths=(RAW,))


def wsgi_factory() -> Any:
    """For gunicorn: ``'tests.sites.html_pages:wsgi_factory()'``, configured by environment."""
    return WSGIIdentityMiddleware(wsgi_app, _settings())


def asgi_factory() -> Any:
    """For uvicorn: ``--factory tests.sites.html_pages:asgi_factory``, configured by environment."""
    return ASGIIdentityMiddleware(asgi_app, _settings())
