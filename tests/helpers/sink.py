"""Talking to a `Sink` in its own tests: raw HTTP requests and their replies, the
events, flags and definitions requests clients send, and a real posthog client.

`send` speaks through urllib, `send_raw` by hand on a socket (for requests urllib
refuses to make); `KEY` is the project key every request and client uses.
"""

from __future__ import annotations

import gzip
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import Message
from typing import Any, NamedTuple

from posthog.client import Client

from posthog_identity.testing import Sink

KEY = "phc_test"
EVENT = {"event": "signup", "distinct_id": "user-1", "properties": {"plan": "pro"}}
OTHER = {"event": "login", "distinct_id": "user-2", "properties": {}}

JS_EVENT = {
    "event": "$pageview",
    "properties": {"distinct_id": "anon-1", "token": KEY, "$current_url": "/"},
}


# -- raw requests -----------------------------------------------------------------


class Reply(NamedTuple):
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def send(
    url: str,
    body: bytes | None = None,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> Reply:
    request = urllib.request.Request(url, body, headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.headers, error.read())


def post_json(url: str, payload: Any, **headers: str) -> Reply:
    return send(url, json.dumps(payload).encode(), headers=headers)


def send_raw(sink: Sink, data: bytes, *, half_close: bool = False) -> Reply:
    """Speak HTTP by hand, for requests urllib refuses to make."""
    host, port = urllib.parse.urlsplit(sink.url).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(data)
        if half_close:
            conn.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = Message()
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name] = value.strip()
    return Reply(int(status_line.split()[1]), headers, body)


def gzip_js(payload: Any) -> bytes:
    return gzip.compress(json.dumps(payload).encode(), mtime=0)


# -- the real posthog client ------------------------------------------------------


@contextmanager
def client(sink: Sink, **options: Any) -> Iterator[Client]:
    ph = Client(KEY, host=sink.url, **options)
    try:
        yield ph
    finally:
        ph.shutdown()


# -- flags and definitions requests -----------------------------------------------

# What posthog-js 1.449 posts to /flags/?v=2 (browser-common's _callFlagsEndpoint).
FLAGS_REQUEST = {
    "token": KEY,
    "distinct_id": "anon-1",
    "groups": {},
    "person_properties": {"$lib": "web", "$lib_version": "1.449.2"},
    "timezone": "Europe/Paris",
    "$device_id": "anon-1",
}


FLAGS = {"new-checkout": "variant-b", "beta": True, "old-nav": False}
PAYLOADS = {"new-checkout": {"button": "green"}, "beta": "hello", "old-nav": [1]}


def ask_flags(sink: Sink, path: str = "/flags/?v=2", request: Any = FLAGS_REQUEST) -> Reply:
    return post_json(sink.url + path, request)


PERSONAL = "phx_personal_test_key"
DEFINITIONS_PATH = "/flags/definitions"


def ask_definitions(
    sink: Sink,
    *,
    key: str | None = PERSONAL,
    token: str | None = KEY,
    path: str = DEFINITIONS_PATH,
    etag: str | None = None,
) -> Reply:
    query = "?send_cohorts" if token is None else f"?token={token}&send_cohorts"
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    if etag is not None:
        headers["If-None-Match"] = etag
    return send(sink.url + path + query, method="GET", headers=headers)
