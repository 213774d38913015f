"""The flags site: an HTML page that renders the flags the server reads, behind the
middleware (the user named by an `X-User` header), for both protocols; the PostHog it
talks to, a `Sink` serving `DEFINITIONS` to the personal keys; and readers for its pages.

A real server imports `flag_server_app` by name
(`uvicorn --factory tests.sites.flags:flag_server_app`), configured by environment;
`module_wsgi_app`/`module_asgi_app` are the same site in an app that configures
posthog's module itself, as posthog's README does.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs

import posthog

from posthog_identity import current_identity, identify_user
from posthog_identity.asgi import IdentityMiddleware as ASGIMiddleware
from posthog_identity.testing import EXAMPLE_FLAG_DEFINITIONS, Sink
from posthog_identity.wsgi import IdentityMiddleware as WSGIMiddleware
from tests.helpers.drivers import Reply
from tests.helpers.pages import snippet_options
from tests.sites.basic import serve_lifespan

# -- its flags, and the PostHog that serves them -------------------------------------------

PERSONAL_KEY = "phx_middleware_personal_key"
INDEPENDENT_KEY = "phx_independent_personal_key"
UNSCOPED_KEY = "phx_key_without_feature_flag_read"
EXPERIMENT = "checkout-experiment"
BETA = "beta-banner"

# A flag only for people on the pro plan, and one only for enterprise companies.
PRO_DASHBOARD = {
    "id": 3,
    "key": "pro-dashboard",
    "active": True,
    "filters": {
        "groups": [
            {
                "properties": [
                    {"key": "plan", "value": ["pro"], "operator": "exact", "type": "person"}
                ],
                "rollout_percentage": 100,
            }
        ]
    },
}
COMPANY_SSO = {
    "id": 4,
    "key": "company-sso",
    "active": True,
    "filters": {
        "aggregation_group_type_index": 0,
        "groups": [
            {
                "properties": [
                    {"key": "tier", "value": "enterprise", "operator": "exact", "type": "group"}
                ],
                "rollout_percentage": 100,
            }
        ],
    },
}
DEFINITIONS = [*EXAMPLE_FLAG_DEFINITIONS, PRO_DASHBOARD, COMPANY_SSO]


@contextmanager
def serving_flags() -> Iterator[Sink]:
    """PostHog for this site: `DEFINITIONS` served to the personal keys, one of them unscoped."""
    with Sink(
        flag_definitions=DEFINITIONS,
        group_type_mapping={"0": "company"},
        personal_api_keys=[PERSONAL_KEY, INDEPENDENT_KEY, UNSCOPED_KEY],
        unscoped_personal_api_keys=[UNSCOPED_KEY],
    ) as sink:
        yield sink


# -- the site: an HTML page that renders what the server reads ---------------------------

PAGE = "<!doctype html><html><head><title>Shop</title></head><body>{}</body></html>"


def render(path: str, query: str) -> str:
    """The page body for `path`, reading flags the way an app would."""
    identity = current_identity()
    assert identity is not None
    if path == "/login":
        identify_user(parse_qs(query)["user"][0])
        identity = current_identity()
        assert identity is not None
    if path in ("/variant", "/login"):
        variant = identity.feature_flag(EXPERIMENT)
        payload = identity.feature_flag_payload(EXPERIMENT)
        return f'<p id="variant">{variant}</p><p id="payload">{json.dumps(payload)}</p>'
    if path == "/read-twice":
        first = identity.feature_flag(EXPERIMENT)
        second = identity.feature_flag(EXPERIMENT)
        banner = identity.feature_flag(BETA)
        return f"<p>{first} {second} {banner}</p>"
    if path == "/bulk":
        return f"<pre>{json.dumps(dict(identity.feature_flags))}</pre>"
    return "<p>home</p>"


def wsgi_page(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = PAGE.format(render(environ["PATH_INFO"], environ.get("QUERY_STRING", ""))).encode()
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [body]


async def asgi_page(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    if scope["path"] == "/api":
        body, content_type = b'{"ok": true}', b"application/json"
    elif scope["path"] == "/async-read":
        identity = current_identity()
        assert identity is not None
        variant = await identity.afeature_flag(EXPERIMENT)
        flags = await identity.afeature_flags()
        page = PAGE.format(f'<p id="variant">{variant}</p><pre>{json.dumps(dict(flags))}</pre>')
        body, content_type = page.encode(), b"text/html"
    elif scope["path"] == "/threaded-read":
        # The way to read flags in an async view without ever waiting on the loop.
        identity = current_identity()
        assert identity is not None
        flags = await asyncio.to_thread(lambda: dict(identity.feature_flags))
        body, content_type = PAGE.format(json.dumps(flags)).encode(), b"text/html"
    else:
        page = PAGE.format(render(scope["path"], scope["query_string"].decode()))
        body, content_type = page.encode(), b"text/html; charset=utf-8"
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]}
    )
    await send({"type": "http.response.body", "body": body})


def header(native: Any, name: str) -> str | None:
    """A request header from a WSGI environ or an ASGI scope."""
    if "headers" in native:
        wanted = name.lower().encode("latin-1")
        found = [v.decode("latin-1") for k, v in native["headers"] if k == wanted]
        return found[0] if found else None
    value = native.get("HTTP_" + name.upper().replace("-", "_"))
    return None if value is None else str(value)


def user_from_header(native: Any) -> str | None:
    return header(native, "X-User")


def flag_server_app() -> Any:
    """`uvicorn --factory tests.sites.flags:flag_server_app`, configured by environment."""
    return ASGIMiddleware(asgi_page, user_id=user_from_header)


def configure_posthog_module() -> None:
    """What posthog's README (and many an app) does: set posthog's module itself."""
    posthog.api_key = os.environ["POSTHOG_API_KEY"]
    posthog.host = os.environ["POSTHOG_HOST"]


def module_wsgi_app() -> WSGIMiddleware:
    """`gunicorn 'tests.sites.flags:module_wsgi_app()'`: posthog's module set by the app."""
    configure_posthog_module()
    return WSGIMiddleware(wsgi_page, user_id=user_from_header)


def module_asgi_app() -> ASGIMiddleware:
    """`uvicorn --factory tests.sites.flags:module_asgi_app`: posthog's module set by the app."""
    configure_posthog_module()
    return ASGIMiddleware(asgi_page, user_id=user_from_header)


# -- reading its pages back ---------------------------------------------------------------


def snippet_data(reply: Reply) -> dict[str, Any]:
    """The options our one snippet hands posthog-js."""
    return snippet_options(reply.body)


def bootstrap(reply: Reply) -> dict[str, Any] | None:
    """`{"values": ..., "payloads": ...}`, or None: the page has no flag bootstrap."""
    flags: dict[str, Any] | None = snippet_data(reply)["flags"]
    return flags


def distinct_id(reply: Reply) -> str:
    identity = snippet_data(reply)["identity"]
    return str(identity["user"] or identity["anonymous"])


def page_text(reply: Reply, pattern: str) -> str:
    """The first group of `pattern` in the page."""
    match = re.search(pattern, reply.body.decode())
    assert match is not None, reply.body
    return match[1]


def rendered_variant(reply: Reply) -> str:
    return page_text(reply, r'<p id="variant">(.*?)</p>')
