"""The first-party proxy: posthog-js's traffic through the site's own origin.

Ad blockers drop requests to PostHog's hosts; under a path of the site itself
(``POSTHOG_IDENTITY_PROXY_PATH``, say ``/ingest``) they pass. The middleware
answers that path and forwards each request: ``/static/*`` and ``/array/*``
(posthog-js itself, its config and lazy extensions) to the assets host,
everything else (events, ``/flags``, surveys, replay) to the ingestion host.
Method, query string and body go byte for byte; the app's cookies and
credentials never leave; the response streams back.

The HTTP client is urllib3, already installed with posthog (through
requests): pooled keep-alive connections, explicit timeouts, and bodies
passed through undecoded (gzip stays gzip). It is blocking, so the ASGI
adapter runs it in the proxy's own thread pool, off the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, TimeoutError

from .hosts import assets_host
from .logs import logger
from .session import client_ip

__all__ = ["BAD_PATH", "TOO_LARGE", "Proxy", "Reply", "error_reply", "status_line"]

# Hop-by-hop headers (RFC 9110 7.6.1) and what a proxy sets itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# The app's credentials, and what the proxy sets itself.
_NOT_FORWARDED = _HOP_BY_HOP | {
    "host",
    "cookie",
    "authorization",
    "content-length",
    "x-forwarded-for",
    "forwarded",
}
# What would touch the site rather than posthog-js (PostHog's own cookies), and what
# the app's server sets itself: a second Date or Server would contradict the first.
_NOT_RETURNED = _HOP_BY_HOP | {"set-cookie", "set-cookie2", "date", "server"}
_ASSETS = ("/static/", "/array/")
CHUNK = 64 * 1024


class Reply(NamedTuple):
    """What goes back to the browser: status, headers, and the body's chunks.

    `body` is a generator: closing it early (the browser went away) closes the
    upstream connection instead of returning it to the pool half read.
    """

    status: int
    headers: list[tuple[str, str]]
    body: Generator[bytes, None, None]
    own: bool = False  #: the proxy's own answer (413, 502, 504), not PostHog's


def error_reply(status: int, text: str) -> Reply:
    """A short plain-text answer of the proxy's own (400, 413, 502, 504)."""
    body = text.encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    return Reply(status, headers, (piece for piece in (body,)), own=True)


class Proxy:
    """Forwards one path prefix to PostHog; built once per middleware.

    :param prefix: the path it answers, without a trailing slash (``/ingest``).
    :param host: the ingestion host; assets go to `assets_host` of it.
    :param max_body: request bodies larger than this get 413, nothing forwarded.
    :param timeout: seconds to connect, and between bytes of the answer; silence
        longer than that gets 504, and no answer takes longer than it in all.
    :param trusted_proxies: hops of X-Forwarded-For believed, as ProxyFix counts.
    """

    def __init__(
        self,
        prefix: str,
        host: str,
        *,
        max_body: int,
        timeout: float,
        trusted_proxies: int = 0,
    ) -> None:
        self.prefix = prefix.rstrip("/")
        self.host = host.rstrip("/")
        self.assets = assets_host(host)
        self.max_body = max_body
        self.timeout = timeout
        self.trusted_proxies = trusted_proxies
        self._pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=16,
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
        )
        #: Where the ASGI adapter runs the blocking calls (never the event loop).
        self.executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="posthog-proxy")

    def matches(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")

    def refuses(self, path: str, raw_path: str | None = None) -> bool:
        """Does the path hide a ``.`` or ``..`` segment or an encoded ``/``?

        `path` is the decoded path, `raw_path` the one on the wire when the server
        tells it. Such a path could name another resource upstream than it seems
        to (servers resolve ``..`` and decode ``%2F`` each their own way), so it is
        refused rather than forwarded; posthog-js never sends one.
        """
        for text in (path[len(self.prefix) :], raw_path or ""):
            if "%2f" in text.lower():
                return True
            if any(segment in (".", "..") for segment in unquote(text).split("/")):
                return True
        return False

    def upstream(self, path: str, query: str) -> str:
        """The URL a request for `path` (below the mount point) is forwarded to."""
        rest = path[len(self.prefix) :] or "/"
        base = self.assets if rest.startswith(_ASSETS) else self.host
        return f"{base}{rest}?{query}" if query else f"{base}{rest}"

    def too_large(self, declared: str | None) -> bool:
        """Is a declared Content-Length over the bound (or not a length at all)?"""
        if declared is None:
            return False
        value = declared.strip()
        return not value.isdigit() or int(value) > self.max_body

    def request_headers(
        self, headers: Iterable[tuple[str, str]], peer: str, forwarded_for: str
    ) -> dict[str, str]:
        """The browser's headers as PostHog should see them: no cookies or credentials,
        no hop-by-hop headers, and the client's address in X-Forwarded-For."""
        named: set[str] = set()
        for name, value in headers:
            if name.lower() == "connection":
                named.update(token.strip().lower() for token in value.split(","))
        sent: dict[str, str] = {}
        for name, value in headers:
            lowered = name.lower()
            if lowered in _NOT_FORWARDED or lowered in named:
                continue
            sent[name] = f"{sent[name]}, {value}" if name in sent else value
        client = client_ip(peer, forwarded_for, self.trusted_proxies)
        if client:
            sent["X-Forwarded-For"] = client
        return sent

    def forward(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> Reply:
        """Send the request upstream; the reply streams (blocking: run it off a loop)."""
        deadline = time.monotonic() + self.timeout
        try:
            response = self._pool.urlopen(
                method,
                url,
                body=body,
                headers=headers,
                redirect=False,
                preload_content=False,
                decode_content=False,
                assert_same_host=False,
            )
        except NewConnectionError as error:  # also a ConnectTimeoutError, for history
            logger.warning("posthog_identity: proxy: %s unreachable (%s)", _origin(url), error)
            return error_reply(502, "PostHog is unreachable\n")
        except TimeoutError:
            logger.warning("posthog_identity: proxy: %s did not answer in time", _origin(url))
            return error_reply(504, "PostHog did not answer in time\n")
        except (HTTPError, OSError) as error:
            logger.warning("posthog_identity: proxy: %s unreachable (%s)", _origin(url), error)
            return error_reply(502, "PostHog is unreachable\n")
        returned = [
            (name, value)
            for name, value in response.headers.items()
            if name.lower() not in _NOT_RETURNED
        ]
        return Reply(response.status, returned, _chunks(response, url, deadline))


def _chunks(
    response: urllib3.BaseHTTPResponse, url: str, deadline: float
) -> Generator[bytes, None, None]:
    """The body as it arrives, undecoded; cut short (logged) past the deadline or on error."""
    complete = False
    try:
        while True:
            if time.monotonic() > deadline:
                logger.warning("posthog_identity: proxy: %s too slow; answer cut", _origin(url))
                return
            chunk = response.read(CHUNK, decode_content=False)
            if not chunk:
                complete = True
                return
            yield chunk
    except (HTTPError, OSError) as error:
        logger.warning("posthog_identity: proxy: reading from %s failed (%s)", _origin(url), error)
    finally:
        # Only a connection read to its end goes back to the pool.
        if complete:
            response.release_conn()
        else:
            response.close()


TOO_LARGE = "the request body is larger than POSTHOG_IDENTITY_PROXY_MAX_BODY\n"
BAD_PATH = "the path has a . or .. segment or an encoded /\n"


def status_line(status: int) -> str:
    """``"200 OK"`` for WSGI's start_response."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
