"""What every benchmark shares: the offline posthog client, settings, cookies and pages.

Everything here is deterministic and built once; nothing here is timed.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from posthog.client import Client

from posthog_identity.settings import Settings
from posthog_identity.signing import CookieCodec, CookieState

SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
API_KEY = "phc_bench_project_key"
#: Never contacted: every client is built with ``send=False``.
HOST = "http://127.0.0.1:9"
COOKIE_NAME = "ph_identity"
USER_ID = "user-42"
ANONYMOUS_ID = "0b0c6b5e-2a4c-4d5e-9f3a-1c2d3e4f5a6b"

#: Cookies a browser sends anyway, so every middleware parses a realistic header.
OTHER_COOKIES = "csrftoken=Zp4QeV0nT3sYkq9Xb1LmA7cR2wD8fGhJ; _ga=GA1.1.1234567890.1700000000"

JSON_BODY = b'{"ok":true,"items":[1,2,3],"next":null}'

#: posthog-js's persistence cookie as a browser sends it (encodeURIComponent of
#: its JSON), holding the session id that server events then carry.
SESSION_ID = "0193a6b2-7c1e-7a1b-9c2d-3e4f5a6b7c8d"
POSTHOG_JS_COOKIE = (
    f"ph_{API_KEY}_posthog=%7B%22distinct_id%22%3A%22{ANONYMOUS_ID}%22%2C%22%24sesid%22%3A"
    f"%5B1733245670123%2C%22{SESSION_ID}%22%2C1733245600000%5D%2C%22%24device_id%22%3A%22"
    f"{ANONYMOUS_ID}%22%2C%22%24user_state%22%3A%22anonymous%22%2C%22%24initial_person_info"
    "%22%3A%7B%22r%22%3A%22%24direct%22%2C%22u%22%3A%22https%3A%2F%2Fexample.com%2F%22%7D%7D"
)


#: The distinct id the floors (posthog's public context alone) bind.
FLOOR_ID = "0190a5b2-7c1e-7a1b-9c2d-3e4f5a6b7c8d"


def offline_client() -> Client:
    """A real posthog client that sends nothing: every middleware gets the same kind."""
    return Client(
        API_KEY,
        host=HOST,
        send=False,
        enable_local_evaluation=False,
        enable_exception_autocapture=False,
    )


def posthog_peer(app: Any, client: Client | None = None) -> Any:
    """posthog's own `PosthogASGIMiddleware` around `app`, as every benchmark runs it:
    the offline client, and no exception capture (ours captures none in these cases)."""
    from posthog.integrations.asgi import PosthogASGIMiddleware

    client = offline_client() if client is None else client
    return PosthogASGIMiddleware(app, client=client, capture_exceptions=False)


def settings() -> Settings:
    return Settings(secrets=(SECRET,), api_key=API_KEY, host=HOST)


def identity_cookie(*, signed_in: bool = False) -> str:
    """A valid, fresh identity cookie: a returning visit sets no cookie."""
    codec = CookieCodec((SECRET,))
    user_hash = codec.user_hash(USER_ID) if signed_in else None
    state = CookieState(ANONYMOUS_ID, user_hash, linked=signed_in, issued_at=int(time.time()))
    return codec.dumps(state)


def html_page(size: int, *, head: bool = True) -> bytes:
    """An HTML page of exactly `size` bytes whose `</head>` comes early, as in real pages.

    With ``head=False`` there is neither ``</head>`` nor ``<body``: the injector has
    to scan its whole look-ahead before it gives up (the worst case).
    """
    top = (
        b"<!doctype html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
        b"<meta name=viewport content='width=device-width, initial-scale=1'>\n"
        b"<title>Benchmark page</title>\n<link rel=stylesheet href=/static/site.css>\n"
    )
    if head:
        top += b"</head>\n<body>\n<main>\n"
    else:
        top = top.replace(b"<head>", b"<!-- no head -->")
    bottom = b"</main>\n</body>\n</html>\n"
    paragraph = (
        b"<p class=text>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do "
        b"eiusmod tempor incididunt ut labore et dolore magna aliqua.</p>\n"
    )
    filler_size = size - len(top) - len(bottom)
    if filler_size < 0:
        raise ValueError(f"a page needs at least {len(top) + len(bottom)} bytes")
    filler = (paragraph * (filler_size // len(paragraph) + 1))[:filler_size]
    page = top + filler + bottom
    assert len(page) == size
    return page


def fresh_anonymous_id() -> str:
    return str(uuid.uuid4())
