"""The first-party proxy: posthog-js's traffic through the site's own origin.

Ad blockers drop requests to PostHog's hosts; under a path of the site itself
(``POSTHOG_IDENTITY_PROXY_PATH``, say ``/ingest``) they pass. The middleware
answers that path and forwards each request: ``/static/*`` and ``/array/*``
(posthog-js itself, its config and lazy extensions) to the assets host,
everything else (events, ``/flags``, surveys, replay) to the ingestion host.
Method, query string and body go byte for byte; the app's cookies and
credentials never leave. Both directions stream: a request body goes upstream
chunk by chunk as it arrives (memory per upload is one chunk, whatever its
size), and the answer comes back the same way.

Under WSGI the HTTP client is urllib3, already installed with posthog
(through requests): pooled keep-alive connections, explicit timeouts, bodies
passed through undecoded (gzip stays gzip) and sent from an iterator, in the
server's own thread. Under ASGI it is `upstream_async.AsyncUpstream`, the same
on the event loop itself. Proxied requests in flight are capped
(`Proxy.admit`): beyond the cap the adapters answer 503 at once, so uploads
never take every worker thread or pile up in memory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterable
from functools import cached_property
from typing import TYPE_CHECKING
from urllib.parse import unquote

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, TimeoutError

from .hosts import assets_host
from .logs import logger
from .proxy_replies import (
    CHUNK,
    HOP_BY_HOP,
    INCOMPLETE,
    SILENT,
    TOO_LARGE,
    UNREACHABLE,
    BodyIncomplete,
    BodyTooLarge,
    Reply,
    error_reply,
    origin_of,
    returned,
)
from .session import client_ip

if TYPE_CHECKING:
    from .upstream_async import AsyncUpstream

__all__ = ["ASGI_CONCURRENCY", "WSGI_CONCURRENCY", "Proxy"]

# The app's credentials, and what the proxy sets itself.
_NOT_FORWARDED = HOP_BY_HOP | {
    "host",
    "cookie",
    "authorization",
    "content-length",
    "expect",  # 100-continue is the app server's business with the browser
    "x-forwarded-for",
    "forwarded",
}
_ASSETS = ("/static/", "/array/")
#: Proxied requests in flight per process when POSTHOG_IDENTITY_PROXY_CONCURRENCY is
#: unset. ASGI: each holds no thread, only a connection to PostHog and the pieces of
#: body in hand (about 0.5 MiB at worst, measured under uvicorn): 32 bound that near
#: 20 MiB and still forward ~300 uploads a second; caps of 8 to 128 measured the same
#: under a storm (docs/proxy.md). WSGI: each holds one of the server's threads for
#: as long as it lasts, so the cap must stay below the thread count.
ASGI_CONCURRENCY = 32
WSGI_CONCURRENCY = 2


class Proxy:
    """Forwards one path prefix to PostHog; built once per middleware.

    :param prefix: the path it answers, without a trailing slash (``/ingest``).
    :param host: the ingestion host; assets go to `assets_host` of it.
    :param max_body: request bodies larger than this get 413, nothing forwarded.
    :param timeout: seconds to connect, and between bytes of the answer; silence
        longer than that gets 504, and no answer takes longer than it in all.
    :param trusted_proxies: hops of X-Forwarded-For believed, as ProxyFix counts.
    :param concurrency: proxied requests in flight at once, beyond which 503;
        None: the adapter's own default (`ASGI_CONCURRENCY`, `WSGI_CONCURRENCY`).
    """

    def __init__(
        self,
        prefix: str,
        host: str,
        *,
        max_body: int,
        timeout: float,
        trusted_proxies: int = 0,
        concurrency: int | None = None,
    ) -> None:
        self.prefix = prefix.rstrip("/")
        self.host = host.rstrip("/")
        self.assets = assets_host(host)
        self.max_body = max_body
        self.timeout = timeout
        self.trusted_proxies = trusted_proxies
        self.concurrency = concurrency
        self._slots: threading.BoundedSemaphore | None = None
        self._slots_lock = threading.Lock()
        # WSGI's client: a connection kept alive for every request in flight. Creating
        # it opens nothing; under ASGI it stays unused.
        self._pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=concurrency or WSGI_CONCURRENCY,
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
        )

    @cached_property
    def connections(self) -> AsyncUpstream:
        """ASGI's client, on the event loop: built on first use, so WSGI never imports h11."""
        from .upstream_async import AsyncUpstream  # it builds on this module

        return AsyncUpstream(self.timeout, self.concurrency or ASGI_CONCURRENCY)

    def admit(self, default: int) -> bool:
        """Take a place for one proxied request, if one is free (never waits).

        `default` is the adapter's cap when none was configured. Every True must be
        followed by one `release` once the answer is sent.
        """
        with self._slots_lock:
            if self._slots is None:
                self._slots = threading.BoundedSemaphore(self.concurrency or default)
            slots = self._slots
        return slots.acquire(blocking=False)

    def release(self) -> None:
        assert self._slots is not None, "release without admit"
        self._slots.release()

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
        # ASCII digits only: a header's latin-1 text may hold "\xb2", which
        # str.isdigit() takes for a digit and int() refuses.
        return not (value.isascii() and value.isdigit()) or int(value) > self.max_body

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

    def forward(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: Iterable[bytes] | bytes | None,
        length: int | None = None,
    ) -> Reply:
        """Send the request upstream; the reply streams (blocking: WSGI's client).

        `body` may be an iterator of chunks, sent as they come: with `length` (the
        declared Content-Length) as they are, without it chunked. One that raises
        `BodyTooLarge` or `BodyIncomplete` leaves the upstream request unfinished,
        its connection closed, so nothing is ingested; the answer is then 413 or 408.
        """
        if length is not None:
            headers = {**headers, "Content-Length": str(length)}
        streamed = body is not None and not isinstance(body, bytes) and length is None
        try:
            response = self._pool.urlopen(
                method,
                url,
                body=body,
                headers=headers,
                chunked=streamed,
                redirect=False,
                preload_content=False,
                decode_content=False,
                assert_same_host=False,
            )
        except BodyTooLarge:
            return error_reply(413, TOO_LARGE)
        except BodyIncomplete:
            return error_reply(408, INCOMPLETE)
        except NewConnectionError as error:  # also a ConnectTimeoutError, for history
            logger.warning("posthog_identity: proxy: %s unreachable (%s)", origin_of(url), error)
            return error_reply(502, UNREACHABLE)
        except TimeoutError:
            logger.warning("posthog_identity: proxy: %s did not answer in time", origin_of(url))
            return error_reply(504, SILENT)
        except (HTTPError, OSError) as error:
            logger.warning("posthog_identity: proxy: %s unreachable (%s)", origin_of(url), error)
            return error_reply(502, UNREACHABLE)
        # The answer's own time starts now: an upload that took long to arrive
        # leaves its answer as much time as any other.
        deadline = time.monotonic() + self.timeout
        return Reply(
            response.status, returned(response.headers.items()), _chunks(response, url, deadline)
        )


def _chunks(
    response: urllib3.BaseHTTPResponse, url: str, deadline: float
) -> Generator[bytes, None, None]:
    """The body as it arrives, undecoded; cut short (logged) past the deadline or on error."""
    complete = False
    try:
        while True:
            if time.monotonic() > deadline:
                logger.warning("posthog_identity: proxy: %s too slow; answer cut", origin_of(url))
                return
            chunk = response.read(CHUNK, decode_content=False)
            if not chunk:
                complete = True
                return
            yield chunk
    except (HTTPError, OSError) as error:
        logger.warning(
            "posthog_identity: proxy: reading from %s failed (%s)", origin_of(url), error
        )
    finally:
        # Only a connection read to its end goes back to the pool.
        if complete:
            response.release_conn()
        else:
            response.close()
