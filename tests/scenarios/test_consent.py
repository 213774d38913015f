"""Consent through both adapters in process: each mode and decision, grant and revoke,
privacy signals, the consent callable, shared pages."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs
from wsgiref.validate import validator

import posthog
import pytest

from posthog_identity import (
    Settings,
    current_identity,
    grant_consent,
    identify_user,
    revoke_consent,
)
from posthog_identity.asgi import IdentityMiddleware as ASGIMiddleware
from posthog_identity.wsgi import IdentityMiddleware as WSGIMiddleware
from tests.helpers.drivers import Driver, Reply, driver_for
from tests.helpers.pages import snippet_options
from tests.sites import basic as apps

if TYPE_CHECKING:
    from posthog_identity.testing import Sink

PERSONLESS = "$process_person_profile"


# -- both adapters ---------------------------------------------------------------------

PAGE = b"<!doctype html><html><head><title>t</title></head><body>page</body></html>"


def whoami() -> dict[str, Any]:
    identity = current_identity()
    assert identity is not None
    return {
        "distinct_id": identity.distinct_id,
        "anonymous_id": identity.anonymous_id,
        "user_id": identity.user_id,
        "consented": identity.consented,
    }


def handle(path: str, query: str, client: Any) -> tuple[str, list[tuple[str, str]], Any]:
    """This module's routes; the rest are `tests.sites.basic`'."""
    params = {k: v[0] for k, v in parse_qs(query).items()}
    html = [("Content-Type", "text/html; charset=utf-8")]
    json_type = [("Content-Type", "application/json")]
    if path == "/page":
        client.capture("Page Viewed", properties={"step": params.get("step", "")})
        return "200 OK", html, [PAGE]
    if path == "/shared":
        return "200 OK", [("Cache-Control", "public, max-age=60"), *html], [PAGE]
    if path in ("/grant", "/revoke"):
        client.capture("Before", properties={"step": params.get("step", "")})
        grant_consent() if path == "/grant" else revoke_consent()
        client.capture("After", properties={"step": params.get("step", "")})
        return "200 OK", json_type, [json.dumps(whoami()).encode()]
    if path == "/identify":
        identify_user(params["user"])
        client.capture("Identified", properties={"step": params.get("step", "")})
        if "grant" in params:
            grant_consent()
        return "200 OK", json_type, [json.dumps(whoami()).encode()]
    if path == "/me":
        return "200 OK", json_type, [json.dumps(whoami()).encode()]
    if path == "/marker":
        client.capture("Marker", properties={"step": params.get("step", "")})
        return "200 OK", json_type, [b"{}"]
    return apps.handle(path, query, client)


def _header_consent(value: str | None) -> object:
    if value is None:
        return None
    if value == "!":
        raise RuntimeError("the consent store is down")
    return {"yes": True, "no": False, "odd": "yes"}[value]


def wsgi_consent(environ: dict[str, Any]) -> object:
    return _header_consent(environ.get("HTTP_X_CONSENT"))


def asgi_consent(scope: dict[str, Any]) -> object:
    raw = dict(scope["headers"]).get(b"x-consent")
    return _header_consent(None if raw is None else raw.decode())


def make(adapter: str, settings: Settings, client: posthog.Client, **options: Any) -> Any:
    if adapter == "wsgi":

        def wsgi_app(environ: dict[str, Any], start_response: Any) -> Any:
            status, headers, body = handle(
                environ["PATH_INFO"], environ.get("QUERY_STRING", ""), client
            )
            start_response(status, headers)
            return body

        return WSGIMiddleware(
            validator(wsgi_app),
            settings,
            user_id=apps.wsgi_user,
            client=client,
            consent=options.pop("consent", wsgi_consent),
            **options,
        )

    async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        status, headers, body = handle(scope["path"], scope["query_string"].decode(), client)
        await send(
            {
                "type": "http.response.start",
                "status": int(status.split()[0]),
                "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": b"".join(body)})

    return ASGIMiddleware(
        asgi_app,
        settings,
        user_id=apps.asgi_user,
        client=client,
        consent=options.pop("consent", asgi_consent),
        **options,
    )


@pytest.fixture
def site_in(adapter: str, settings: Settings, client: posthog.Client) -> Callable[..., Driver]:
    def build(mode: str, **changes: Any) -> Driver:
        return driver_for(
            adapter, make(adapter, replace(settings, consent=mode, **changes), client)
        )

    return build


def visit(
    site: Driver,
    url: str,
    *,
    consent: str | None = None,
    headers: dict[str, str] | None = None,
    user: str | None = None,
) -> Reply:
    """A request with the identity cookie the driver keeps plus the banner's consent cookie."""
    jar = [f"ph_identity={site.cookie}"] if site.cookie else []
    if consent is not None:
        jar.append(f"ph_consent={consent}")
    return site.get(url, cookie="; ".join(jar), headers=headers, user=user)


def set_cookies(reply: Reply, name: str) -> list[str]:
    return [h for h in reply.headers_named("Set-Cookie") if h.startswith(f"{name}=")]


def identity_cookie(reply: Reply) -> str:
    """'set', 'deleted' or 'none': what the response does to the identity cookie."""
    (header,) = set_cookies(reply, "ph_identity") or [""]
    if not header:
        return "none"
    return "deleted" if "Max-Age=0" in header else "set"


def snippet_data(reply: Reply) -> dict[str, Any]:
    """The options our one snippet hands posthog-js."""
    return snippet_options(reply.body)


def snippet_mode(reply: Reply) -> str:
    """'normal', or the consent state the page starts posthog-js in."""
    consent = snippet_data(reply).get("consent")
    return "normal" if consent is None else str(consent["state"])


def page_event(sink: Sink, step: str, name: str = "Page Viewed") -> dict[str, Any]:
    def seen(events: list[dict[str, Any]]) -> bool:
        return any(e["properties"].get("step") == step for e in events)

    events = sink.wait_for(seen, event=name)
    return next(e for e in events if e["properties"].get("step") == step)


def flushed(site: Driver, sink: Sink, step: str) -> None:
    """Everything captured before has reached the sink (one client, in order)."""
    visit(site, f"/marker?step={step}")
    page_event(sink, step, "Marker")


DECISIONS = ["none", "granted", "denied", "revoked"]
# mode, decision -> (identity cookie, snippet mode, events tracked on the cookie's id)
EXPECTED = {
    ("not-required", "none"): ("set", "normal", True),
    ("not-required", "granted"): ("set", "normal", True),
    ("not-required", "denied"): ("set", "normal", True),
    ("not-required", "revoked"): ("none", "normal", True),
    ("opt-in", "none"): ("none", "pending", False),
    ("opt-in", "granted"): ("set", "normal", True),
    ("opt-in", "denied"): ("none", "denied", False),
    ("opt-in", "revoked"): ("deleted", "denied", False),
    ("opt-out", "none"): ("set", "normal", True),
    ("opt-out", "granted"): ("set", "normal", True),
    ("opt-out", "denied"): ("none", "denied", False),
    ("opt-out", "revoked"): ("deleted", "denied", False),
}


@pytest.mark.parametrize("decision", DECISIONS)
@pytest.mark.parametrize("mode", ["not-required", "opt-in", "opt-out"])
def test_each_mode_and_decision(
    site_in: Callable[..., Driver], sink: Sink, mode: str, decision: str
) -> None:
    site = site_in(mode)
    before = None
    if decision == "revoked":
        # A visitor who consented earlier, then refuses on the banner.
        visit(site, "/page?step=earlier", consent="granted")
        before = site.state.anonymous_id
    consent = {"none": None, "granted": "granted"}.get(decision, "denied")
    reply = visit(site, "/page?step=now", consent=consent)

    cookie, mode_in_page, tracked = EXPECTED[(mode, decision)]
    assert identity_cookie(reply) == cookie
    assert snippet_mode(reply) == mode_in_page
    event = page_event(sink, "now")
    if tracked:
        expected_id = before or site.state.anonymous_id
        assert event["distinct_id"] == expected_id
        assert str(expected_id) in reply.body.decode(), "the page carries the same id"
    else:
        assert event["distinct_id"] != before
        assert event["properties"][PERSONLESS] is False
        assert site.cookie in (None, ""), "no identity cookie is kept"
        data = snippet_data(reply)
        assert data.get("identity") is None
        assert event["distinct_id"] not in reply.body.decode(), "no id in the page"
        assert data["consent"]["clear"] is True, "earlier PostHog storage is cleared"


def test_without_consent_each_request_has_its_own_unlinked_id(
    site_in: Callable[..., Driver], sink: Sink
) -> None:
    site = site_in("opt-in")
    first = json.loads(visit(site, "/me").body)
    second = json.loads(visit(site, "/me", user="alice").body)
    assert first["consented"] is False
    assert first["distinct_id"] != second["distinct_id"]
    assert second["user_id"] is None, "a signed-in user is not named without consent"
    assert second["distinct_id"] != "alice"
    assert site.sent[-1].headers_named("Set-Cookie") == []
    flushed(site, sink, "unlinked")
    assert sink.events("$create_alias") == []


def test_always_person_profiles_still_make_no_consent_personless(
    site_in: Callable[..., Driver], sink: Sink
) -> None:
    site = site_in("opt-in", person_profiles="always")
    visit(site, "/page?step=always")
    assert page_event(sink, "always")["properties"][PERSONLESS] is False


def test_grant_consent_starts_the_lifecycle_on_that_response(
    site_in: Callable[..., Driver], sink: Sink
) -> None:
    site = site_in("opt-in")
    reply = visit(site, "/grant?step=grant")
    assert identity_cookie(reply) == "set"
    (consent_cookie,) = set_cookies(reply, "ph_consent")
    assert consent_cookie.startswith("ph_consent=granted;")
    assert "HttpOnly" not in consent_cookie, "a banner's script may read it"
    assert "Path=/" in consent_cookie
    after = json.loads(reply.body)
    assert after == {
        "distinct_id": site.state.anonymous_id,
        "anonymous_id": site.state.anonymous_id,
        "user_id": None,
        "consented": True,
    }
    before_grant = page_event(sink, "grant", "Before")
    after_grant = page_event(sink, "grant", "After")
    assert before_grant["distinct_id"] != site.state.anonymous_id
    assert after_grant["distinct_id"] == site.state.anonymous_id

    # The consent cookie it wrote keeps the decision.
    again = visit(site, "/page?step=next", consent="granted")
    assert again.headers_named("Set-Cookie") == []
    assert snippet_mode(again) == "normal"
    assert page_event(sink, "next")["distinct_id"] == site.state.anonymous_id


def test_revoke_consent_deletes_the_cookie_and_unnames_the_request(
    site_in: Callable[..., Driver], sink: Sink
) -> None:
    site = site_in("opt-out", cookie_domain="example.com")
    visit(site, "/page?step=tracked")
    visit(site, "/identify?user=alice&step=login")
    anonymous = site.state.anonymous_id
    (alias,) = sink.wait_for(event="$create_alias", count=1)
    reply = visit(site, "/revoke?step=revoke", user="alice")

    (deleted,) = set_cookies(reply, "ph_identity")
    assert deleted.startswith("ph_identity=;")
    for attribute in ("Max-Age=0", "Path=/", "Domain=example.com", "HttpOnly"):
        assert attribute in deleted
    (consent_cookie,) = set_cookies(reply, "ph_consent")
    assert consent_cookie.startswith("ph_consent=denied;")
    assert "Domain=example.com" in consent_cookie
    assert json.loads(reply.body)["consented"] is False

    assert page_event(sink, "revoke", "Before")["distinct_id"] == "alice"
    after = page_event(sink, "revoke", "After")
    assert after["distinct_id"] not in ("alice", anonymous)
    assert after["properties"][PERSONLESS] is False
    assert alias["distinct_id"] == "alice"
    flushed(site, sink, "revoked")
    assert len(sink.events("$create_alias")) == 1


def test_identify_user_without_consent_is_remembered_nowhere(
    site_in: Callable[..., Driver], sink: Sink
) -> None:
    site = site_in("opt-in")
    reply = visit(site, "/identify?user=bob&step=no-consent")
    assert reply.status == 200
    assert reply.headers_named("Set-Cookie") == []
    assert json.loads(reply.body)["user_id"] is None
    event = page_event(sink, "no-consent", "Identified")
    assert event["distinct_id"] != "bob"
    assert event["properties"][PERSONLESS] is False
    flushed(site, sink, "identify")
    assert sink.events("$create_alias") == []


def test_identify_then_grant_in_one_request_signs_the_user_in(
    site_in: Callable[..., Driver], sink: Sink
) -> None:
    site = site_in("opt-in")
    reply = visit(site, "/identify?user=carol&grant=1&step=both")
    assert json.loads(reply.body)["user_id"] == "carol"
    assert identity_cookie(reply) == "set"
    assert site.state.user_hash is not None


@pytest.mark.parametrize(
    ("mode", "changes", "headers", "tracked"),
    [
        ("opt-out", {}, {"Sec-GPC": "1"}, False),
        ("opt-out", {"respect_gpc": False}, {"Sec-GPC": "1"}, True),
        ("not-required", {}, {"Sec-GPC": "1"}, True),
        ("opt-out", {}, {"Sec-GPC": "0"}, True),
        ("opt-out", {}, {"DNT": "1"}, True),
        ("opt-out", {"respect_dnt": True}, {"DNT": "1"}, False),
    ],
    ids=["gpc", "gpc-off", "gpc-not-required", "gpc-0", "dnt-off", "dnt-on"],
)
def test_privacy_signals(
    site_in: Callable[..., Driver],
    sink: Sink,
    mode: str,
    changes: dict[str, Any],
    headers: dict[str, str],
    tracked: bool,
) -> None:
    site = site_in(mode, **changes)
    reply = visit(site, "/page?step=signal", headers=headers)
    assert (identity_cookie(reply) == "set") is tracked
    assert (snippet_mode(reply) == "normal") is tracked
    assert (
        page_event(sink, "signal")["distinct_id"] == (site.cookie and site.state.anonymous_id)
    ) is tracked


def test_a_granted_cookie_beats_gpc(site_in: Callable[..., Driver]) -> None:
    site = site_in("opt-out")
    reply = visit(site, "/page", consent="yes", headers={"Sec-GPC": "1"})
    assert identity_cookie(reply) == "set"


@pytest.mark.parametrize(
    ("mode", "header", "consent", "tracked"),
    [
        ("opt-in", "yes", None, True),
        ("opt-out", "no", "granted", False),
        ("opt-in", None, "granted", True),
    ],
    ids=["callable-grants", "callable-beats-cookie", "callable-none-cookie-decides"],
)
def test_the_consent_callable(
    site_in: Callable[..., Driver],
    mode: str,
    header: str | None,
    consent: str | None,
    tracked: bool,
) -> None:
    site = site_in(mode)
    headers = {} if header is None else {"X-Consent": header}
    reply = visit(site, "/page", consent=consent, headers=headers)
    assert (identity_cookie(reply) == "set") is tracked


@pytest.mark.parametrize("header", ["!", "odd"], ids=["raises", "not-a-bool"])
def test_a_failing_callable_fails_closed_and_deletes_nothing(
    site_in: Callable[..., Driver],
    sink: Sink,
    caplog_identity: pytest.LogCaptureFixture,
    header: str,
) -> None:
    site = site_in("opt-out")
    visit(site, "/page?step=ok")
    anonymous = site.state.anonymous_id
    for step in ("fail-1", "fail-2"):
        reply = visit(site, f"/page?step={step}", headers={"X-Consent": header})
        assert reply.status == 200
        assert reply.headers_named("Set-Cookie") == [], "the cookie is neither set nor deleted"
        assert snippet_mode(reply) == "unknown"
        assert snippet_data(reply)["consent"]["clear"] is False, "storage is left alone"
        event = page_event(sink, step)
        assert event["distinct_id"] != anonymous
        assert event["properties"][PERSONLESS] is False
    warnings = [r for r in caplog_identity.records if "consent callable" in r.getMessage()]
    assert len(warnings) == 1, "logged once"
    assert site.state.anonymous_id == anonymous


@pytest.mark.parametrize(("mode", "calls"), [("opt-in", 1), ("not-required", 0)])
def test_the_callable_is_asked_at_most_once_per_request(
    adapter: str, settings: Settings, client: posthog.Client, mode: str, calls: int
) -> None:
    asked: list[object] = []

    def consent(native: object) -> None:
        asked.append(native)

    app = make(adapter, replace(settings, consent=mode), client, consent=consent)
    visit(driver_for(adapter, app), "/identify?user=dave", user="dave")
    assert len(asked) == calls


def test_an_async_consent_callable_fails_closed_without_warnings(
    adapter: str,
    settings: Settings,
    client: posthog.Client,
    caplog_identity: pytest.LogCaptureFixture,
) -> None:
    async def consent(native: object) -> bool:
        return True

    app = make(adapter, replace(settings, consent="opt-in"), client, consent=consent)
    reply = visit(driver_for(adapter, app), "/page")
    assert reply.headers_named("Set-Cookie") == []
    assert "not async" in caplog_identity.text


def test_a_shared_cacheable_page_decides_in_the_browser(site_in: Callable[..., Driver]) -> None:
    site = site_in("opt-in")
    visit(site, "/page", consent="granted")
    assert site.cookie
    for consent in (None, "granted", "denied"):
        reply = visit(site, "/shared", consent=consent)
        assert reply.headers_named("Set-Cookie") == [], "nothing per visitor on a shared page"
        data = snippet_data(reply)
        assert data.get("identity") is None
        assert data["consent"]["state"] == "browser"
        assert data["consent"]["fallback"] == "pending"
        assert data["consent"]["cookie"] == "ph_consent"


def test_grant_and_revoke_are_no_ops_when_consent_is_not_required(
    site_in: Callable[..., Driver], caplog_identity: pytest.LogCaptureFixture
) -> None:
    site = site_in("not-required")
    visit(site, "/page")
    reply = visit(site, "/revoke")
    assert reply.headers_named("Set-Cookie") == []
    assert json.loads(reply.body)["consented"] is True
    assert "revoke_consent() ignored" in caplog_identity.text
