"""The first-party proxy over WSGI: the request body in, PostHog's answer streamed out."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .proxy import BAD_PATH, TOO_LARGE, error_reply, status_line

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from .proxy import Proxy, Reply

__all__ = ["forward"]


def forward(
    proxy: Proxy, environ: WSGIEnvironment, start_response: StartResponse
) -> Iterable[bytes]:
    """Answer a request under the proxy path by forwarding it to PostHog."""
    reply = _proxy_reply(proxy, environ)
    start_response(status_line(reply.status), reply.headers)
    return reply.body


def _proxy_reply(proxy: Proxy, environ: WSGIEnvironment) -> Reply:
    # The path as sent, where the server tells it (gunicorn, waitress): %2F survives there.
    raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    raw_path = raw_uri.partition("?")[0] if raw_uri else None
    if proxy.refuses(environ.get("PATH_INFO", ""), raw_path):
        return error_reply(400, BAD_PATH)
    declared = environ.get("CONTENT_LENGTH") or None
    if proxy.too_large(declared):
        return error_reply(413, TOO_LARGE)
    stream = environ["wsgi.input"]
    if declared is not None:
        body = stream.read(int(declared))
    elif environ.get("wsgi.input_terminated"):
        body = stream.read(proxy.max_body + 1)  # a chunked body: its end is marked
    else:
        body = b""  # PEP 3333: without a length, reading could block
    if len(body) > proxy.max_body:
        return error_reply(413, TOO_LARGE)
    headers = [
        (key[5:].replace("_", "-").title(), value)
        for key, value in environ.items()
        if key.startswith("HTTP_")
    ]
    if environ.get("CONTENT_TYPE"):
        headers.append(("Content-Type", environ["CONTENT_TYPE"]))
    url = proxy.upstream(environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""))
    sent = proxy.request_headers(
        headers, environ.get("REMOTE_ADDR", ""), environ.get("HTTP_X_FORWARDED_FOR", "")
    )
    method = environ.get("REQUEST_METHOD", "GET")
    return proxy.forward(method, url, sent, body if body or method != "GET" else None)
