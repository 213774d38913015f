"""One HTTP request to an upstream for `check --ping`, and what came of it, in words.

"Did not answer" hides the fix: a refused connection (wrong port, nothing
running), a failed TLS handshake (a proxy re-signing traffic, http spoken as
https), a name that does not resolve (a typo in the host) and a silent server
each call for a different one, so each is told apart.
"""

from __future__ import annotations

import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from http import HTTPStatus
from http.client import HTTPException
from urllib.parse import urlsplit

__all__ = ["Answer", "ask"]


@dataclass(frozen=True)
class Answer:
    """What one request found: a status and the answering server, or why none came."""

    url: str
    status: int | None = None
    server: str | None = None
    failure: str | None = None  #: why no HTTP answer came, in words

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status < 400

    def describe(self) -> str:
        """`200 OK (server: envoy)`, `404 Not Found (...)`, or the failure."""
        if self.status is None:
            return str(self.failure)
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Unknown"
        server = f"server: {self.server}" if self.server else "no Server header"
        return f"{self.status} {phrase} ({server})"


def ask(method: str, url: str, body: bytes | None, timeout: float) -> Answer:
    """Send one request (redirects followed) and describe the outcome; never raises."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    try:
        request = urllib.request.Request(url, body, headers, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(url, response.status, response.headers.get("Server"))
    except urllib.error.HTTPError as error:
        with error:
            return Answer(url, error.code, error.headers.get("Server"))
    except urllib.error.URLError as error:
        reason = error.reason
        cause = reason if isinstance(reason, BaseException) else OSError(str(reason))
        return Answer(url, failure=_failure(url, cause, timeout))
    except (OSError, HTTPException, ValueError) as error:
        return Answer(url, failure=_failure(url, error, timeout))


def _failure(url: str, error: BaseException, timeout: float) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"TLS failure: the certificate of {host} is not trusted ({error.verify_message}); "
            "a proxy re-signing traffic needs its CA in SSL_CERT_FILE"
        )
    if isinstance(error, ssl.SSLError):
        return (
            f"TLS failure: the TLS handshake with {host}:{port} failed ({error.reason or error}); "
            "does it speak https on that port?"
        )
    if isinstance(error, socket.gaierror):
        return f"DNS failure: {host} does not resolve ({error.strerror})"
    if isinstance(error, ConnectionRefusedError):
        return f"connection refused: nothing listens at {host}:{port}"
    if isinstance(error, TimeoutError):
        return f"timeout: no answer within {timeout:g}s"
    if isinstance(error, (ConnectionError, HTTPException)):  # reset, broken pipe
        return f"the connection to {host}:{port} closed without an answer ({error})"
    if isinstance(error, ValueError):
        return f"not a URL that can be asked: {url} ({error})"
    return f"unreachable: {error}"
