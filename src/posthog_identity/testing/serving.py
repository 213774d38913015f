"""werkzeug's threaded server, made quiet and strict for the sink.

It logs to the `posthog_identity.testing` logger at debug (never to stderr),
answers its own errors (a bad request line) in PostHog's JSON, speaks HTTP/1.0
so no keep-alive connection outlives a stop, and joins its request threads on
close. A port that cannot be bound raises `OSError`, where werkzeug would exit.
"""

from __future__ import annotations

import json
import logging
import socket
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from werkzeug.serving import LISTEN_QUEUE, ThreadedWSGIServer, WSGIRequestHandler
from werkzeug.serving import select_address_family as _address_family

from .protocol import error_reply

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["make_server"]

logger = logging.getLogger("posthog_identity.testing")


class _Handler(WSGIRequestHandler):
    """werkzeug's handler, logging to our logger at debug and erring in JSON."""

    server_version = "posthog-identity-sink"
    # HTTP/1.0: one request per connection, so no idle keep-alive connection
    # outlives stop() on either side.
    protocol_version = "HTTP/1.0"
    timeout = 10.0

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.debug('%s "%s" %s %s', self.address_string(), self.requestline, code, size)

    def log(self, type: str, message: str, *args: Any) -> None:
        logger.debug("%s " + message, self.address_string(), *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer the server's own errors (a bad request line...) in JSON."""
        status = HTTPStatus(code)
        detail = explain or message or status.phrase
        body = json.dumps(error_reply(code, status.name.lower(), detail)).encode()
        self.log_error("code %d, message %s", code, message)
        self.send_response(code, message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(body)


class _Server(ThreadedWSGIServer):
    # Handler threads are joined by server_close(), so a stopped sink has no
    # request still writing; each is bounded by the handler's socket timeout.
    daemon_threads = False

    def log(self, type: str, message: str, *args: Any) -> None:
        logger.debug(message, *args)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-request; the default prints to stderr.
        logger.debug("connection from %s failed", client_address, exc_info=True)


def _listen(host: str, port: int) -> socket.socket:
    # Bound here, not by werkzeug, whose bind failure prints and exits.
    return socket.create_server(
        (host, port), family=_address_family(host, port), backlog=LISTEN_QUEUE
    )


def make_server(host: str, port: int, app: WSGIApplication) -> ThreadedWSGIServer:
    """A bound server for `app`; serve it with `serve_forever`, stop it with `shutdown`."""
    with _listen(host, port) as listener:
        return _Server(host, port, app, handler=_Handler, fd=listener.fileno())
