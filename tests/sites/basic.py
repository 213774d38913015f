"""The same small site as a plain WSGI app and a plain ASGI app, for every adapter test.

Routes: `/` (captures "Home Viewed"), `/login?user=U` (identify_user, redirect),
`/logout` (forget_user, redirect), `/whoami` (current identity as JSON),
`/module-capture` (module-level posthog.capture), `/public` (Cache-Control:
public), `/stream` (a streamed body that captures while it streams),
`/own-properties` (a capture with its own `$current_url` and `$session_id`),
`/static/app.css` (excluded in the server apps).

Who is logged in comes from the `X-User` request header through the
`user_id` callback: absent means nobody; `!` makes the callback raise; `?`
returns an invalid id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import posthog

from posthog_identity import current_identity, forget_user, identify_user
from posthog_identity.asgi import IdentityMiddleware as ASGIIdentityMiddleware
from posthog_identity.settings import Settings
from posthog_identity.wsgi import IdentityMiddleware as WSGIIdentityMiddleware


def whoami() -> dict[str, Any]:
    identity = current_identity()
    if identity is None:
        return {"identity": None}
    return {
        "identity": {
            "distinct_id": identity.distinct_id,
            "anonymous_id": identity.anonymous_id,
            "user_id": identity.user_id,
            "is_identified": identity.is_identified,
        }
    }


def user_from_header(value: str | None) -> object:
    if value is None:
        return None
    if value == "!":
        raise RuntimeError("the session store is down")
    if value == "?":
        return b"not-an-id"
    return value


def handle(path: str, query: str, client: Any) -> tuple[str, list[tuple[str, str]], Any]:
    """The site's logic, shared by both protocol front ends."""
    params = {k: v[0] for k, v in parse_qs(query).items()}
    text = [("Content-Type", "text/plain; charset=utf-8")]
    if path == "/":
        client.capture("Home Viewed")
        return "200 OK", text, [b"home"]
    if path == "/login":
        identify_user(params.get("user", ""))
        client.capture("Logged In")
        return "302 Found", [("Location", "/"), *text], [b""]
    if path == "/logout":
        forget_user()
        return "302 Found", [("Location", "/"), *text], [b""]
    if path == "/whoami":
        return (
            "200 OK",
            [("Content-Type", "application/json")],
            [json.dumps(whoami()).encode()],
        )
    if path == "/module-capture":
        posthog.capture("Module Event")
        return "200 OK", text, [b"ok"]
    if path == "/public":
        return "200 OK", [("Cache-Control", "public, max-age=60"), *text], [b"cached"]
    if path == "/stream":

        def chunks() -> Iterator[bytes]:
            yield b"first "
            client.capture("Streamed")
            yield json.dumps(whoami()).encode()

        return "200 OK", text, chunks()
    if path == "/own-properties":
        mine = {"$current_url": "https://app.example/mine", "$session_id": "app-session"}
        client.capture("Own Properties", properties=mine)
        return "200 OK", text, [b"ok"]
    if path == "/static/app.css":
        return "200 OK", [("Content-Type", "text/css")], [b"body{}"]
    return "404 Not Found", text, [b"not found"]


def make_wsgi_app(client: Any) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        status, headers, body = handle(
            environ["PATH_INFO"], environ.get("QUERY_STRING", ""), client
        )
        start_response(status, headers)
        return body

    return app


async def serve_lifespan(receive: Any, send: Any) -> None:
    """Answer an ASGI lifespan: startup, then shutdown (the test apps hold no resources)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def make_asgi_app(client: Any) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        assert scope["type"] == "http"
        status, headers, body = handle(scope["path"], scope["query_string"].decode(), client)
        await send(
            {
                "type": "http.response.start",
                "status": int(status.split()[0]),
                "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
            }
        )
        for chunk in body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def wsgi_user(environ: dict[str, Any]) -> object:
    return user_from_header(environ.get("HTTP_X_USER"))


def asgi_user(scope: dict[str, Any]) -> object:
    headers = dict(scope["headers"])
    raw = headers.get(b"x-user")
    return user_from_header(None if raw is None else raw.decode())


def _server_client(settings: Settings) -> posthog.Client:
    # The module-level client posts to the same sink, so module captures are seen too.
    posthog.api_key = settings.api_key
    posthog.host = settings.host
    return posthog.Client(settings.api_key or "", host=settings.host, flush_interval=0.1)


def wsgi_factory() -> Any:
    """For gunicorn: `'tests.sites.basic:wsgi_factory()'`, configured by environment."""
    settings = Settings.from_env(exclude_paths=("/static",))
    client = _server_client(settings)
    return WSGIIdentityMiddleware(make_wsgi_app(client), settings, user_id=wsgi_user, client=client)


def asgi_factory() -> Any:
    """For uvicorn: `--factory tests.sites.basic:asgi_factory`, configured by environment."""
    settings = Settings.from_env(exclude_paths=("/static",))
    client = _server_client(settings)
    return ASGIIdentityMiddleware(make_asgi_app(client), settings, user_id=asgi_user, client=client)
