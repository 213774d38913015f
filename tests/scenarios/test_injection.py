"""Snippet injection through both adapters in process: placement, length, skipped
responses, shared pages, nonces, init options."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest

from posthog_identity import identify_user
from posthog_identity.asgi import IdentityMiddleware as ASGIMiddleware
from posthog_identity.wsgi import IdentityMiddleware as WSGIMiddleware
from tests.helpers.drivers import Driver, Reply, call_asgi, call_wsgi
from tests.helpers.pages import HTML, PAGE, snippet_options

if TYPE_CHECKING:
    from posthog_identity.settings import Settings


def wsgi_page(body: list[bytes], headers: list[tuple[str, str]], status: str = "200 OK") -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/login":
            identify_user("mallory")
        start_response(status, headers)
        return body

    return app


def asgi_page(body: list[bytes], headers: list[tuple[str, str]], status: str = "200 OK") -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/login":
            identify_user("mallory")
        raw = [(k.lower().encode(), v.encode()) for k, v in headers]
        await send({"type": "http.response.start", "status": int(status[:3]), "headers": raw})
        for i, chunk in enumerate(body):
            await send(
                {"type": "http.response.body", "body": chunk, "more_body": i < len(body) - 1}
            )
        if not body:
            await send({"type": "http.response.body", "body": b""})

    return app


def serve(
    adapter: str, settings: Settings, body: list[bytes], headers: list[tuple[str, str]], **kw: Any
) -> Driver:
    status = kw.pop("status", "200 OK")
    if adapter == "wsgi":
        app = WSGIMiddleware(wsgi_page(body, headers, status), settings, **kw)
        return Driver(lambda method, url, h: call_wsgi(app, method, url, h))
    wrapped = ASGIMiddleware(asgi_page(body, headers, status), settings, **kw)
    return Driver(lambda method, url, h: call_asgi(wrapped, method, url, h))


def snippet_data(reply: Reply) -> dict[str, Any]:
    """The options our one snippet hands posthog-js."""
    return snippet_options(reply.body)


def test_an_html_page_gets_one_snippet_before_head_close(adapter: str, settings: Settings) -> None:
    reply = serve(adapter, settings, [PAGE], [("Content-Type", HTML)]).get("/")
    assert reply.body.count(b"<script data-posthog-identity") == 1
    assert reply.body.index(b"data-posthog-identity") < reply.body.index(b"</head>")
    assert reply.headers_named("Content-Length") == []


def test_the_bootstrap_id_is_the_cookies_id(adapter: str, settings: Settings) -> None:
    site = serve(adapter, settings, [PAGE], [("Content-Type", HTML)])
    reply = site.get("/")
    assert snippet_data(reply)["identity"] == {
        "anonymous": site.state.anonymous_id,
        "user": None,
        "signedIn": False,
    }


def test_the_snippet_uses_the_identity_at_response_start(adapter: str, settings: Settings) -> None:
    site = serve(adapter, settings, [PAGE], [("Content-Type", HTML)])
    site.get("/")
    identity = snippet_data(site.get("/login"))["identity"]
    assert identity == {"anonymous": site.state.anonymous_id, "user": "mallory", "signedIn": True}


def test_content_length_is_corrected(adapter: str, settings: Settings) -> None:
    headers = [("Content-Type", HTML), ("Content-Length", str(len(PAGE)))]
    reply = serve(adapter, settings, [PAGE], headers).get("/")
    assert reply.header("Content-Length") == str(len(reply.body))
    assert len(reply.body) > len(PAGE)


def test_content_length_of_an_untouched_page_is_kept(adapter: str, settings: Settings) -> None:
    page = b"<html>no insertion point"
    headers = [("Content-Type", HTML), ("Content-Length", str(len(page)))]
    reply = serve(adapter, settings, [page], headers).get("/")
    assert reply.body == page
    assert reply.header("Content-Length") == str(len(page))


def test_an_insertion_point_split_across_chunks_is_found(adapter: str, settings: Settings) -> None:
    chunks = [PAGE[i : i + 3] for i in range(0, len(PAGE), 3)]
    reply = serve(adapter, settings, chunks, [("Content-Type", HTML)]).get("/")
    assert reply.body.count(b"data-posthog-identity") == 1
    start = reply.body.index(b"<script data-posthog-identity")
    end = reply.body.index(b"</script>", start) + len(b"</script>")
    assert reply.body[:start] + reply.body[end:] == PAGE


@pytest.mark.parametrize(
    ("headers", "status", "method"),
    [
        ([("Content-Type", HTML)], "200 OK", "HEAD"),
        ([("Content-Type", "application/json")], "200 OK", "GET"),
        ([("Content-Type", HTML), ("Content-Encoding", "gzip")], "200 OK", "GET"),
        ([("Content-Type", HTML), ("Content-Disposition", "attachment")], "200 OK", "GET"),
        ([("Content-Type", HTML), ("Location", "/")], "302 Found", "GET"),
        ([("ETag", '"v1"')], "304 Not Modified", "GET"),
    ],
    ids=["head", "json", "gzip", "attachment", "redirect", "not-modified"],
)
def test_skipped_responses_are_untouched_but_keep_the_cookie(
    adapter: str, settings: Settings, headers: list[tuple[str, str]], status: str, method: str
) -> None:
    body = [] if status.startswith("304") or method == "HEAD" else [PAGE]
    reply = serve(adapter, settings, body, headers, status=status).get("/", method=method)
    assert reply.body == b"".join(body)
    assert len(reply.identity_cookies) == 1


def test_a_shared_cacheable_page_gets_the_snippet_without_an_id(
    adapter: str, settings: Settings
) -> None:
    headers = [("Content-Type", HTML), ("Cache-Control", "public, max-age=600")]
    reply = serve(adapter, settings, [PAGE], headers).get("/")
    assert snippet_data(reply)["identity"] is None
    assert reply.headers_named("Set-Cookie") == []


def test_a_csp_nonce_is_reused(adapter: str, settings: Settings) -> None:
    headers = [
        ("Content-Type", HTML),
        ("Content-Security-Policy", "script-src 'nonce-Zm9v' 'strict-dynamic'"),
    ]
    reply = serve(adapter, settings, [PAGE], headers).get("/")
    assert b'<script data-posthog-identity nonce="Zm9v">' in reply.body


@pytest.mark.parametrize(
    "change", [{"inject": False}, {"api_key": None}], ids=["inject-off", "no-api-key"]
)
def test_no_snippet_when_injection_is_off_or_there_is_no_key(
    adapter: str, settings: Settings, change: dict[str, Any]
) -> None:
    reply = serve(adapter, replace(settings, **change), [PAGE], [("Content-Type", HTML)]).get("/")
    assert reply.body == PAGE
    assert len(reply.identity_cookies) == 1


def test_init_options_from_the_keyword_reach_the_page(adapter: str, settings: Settings) -> None:
    options = {"capture_pageview": False, "api_host": "/ingest"}
    site = serve(adapter, settings, [PAGE], [("Content-Type", HTML)], init_options=options)
    assert snippet_data(site.get("/"))["config"] == {
        "api_host": "/ingest",
        "capture_pageview": False,
    }
