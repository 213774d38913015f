"""The demo site: a tiny WSGI app wrapped by the middleware, with a live events page.

With no POSTHOG_API_KEY everything goes to an embedded sink, so a newcomer sees
the whole identity story (cookie, login link, captures, browser events) with no
PostHog account. Given a posthog-js directory, the sink serves posthog-js too, so
the browser side needs no internet either.
"""

from __future__ import annotations

import html
import json
import os
import secrets
import sys
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from itsdangerous import BadSignature, URLSafeSerializer
from posthog.client import Client
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from .context import current_identity, current_resolution, forget_user, identify_user
from .settings import Settings
from .testing.cli import format_event
from .testing.server import Sink
from .wsgi import IdentityMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["DemoSite", "find_posthog_js", "serve"]

DEMO_API_KEY = "phc_posthog_identity_demo"
#: posthog-js from PostHog's CDN; its events still go to the local sink.
DEMO_SCRIPT_URL = "https://us-assets.i.posthog.com/static/array.js"
_LOGIN_COOKIE = "demo_login"
_OFFLINE_HINT = (
    "To run the demo offline, serve posthog-js locally: posthog-identity demo --posthog-js DIR, "
    "with DIR the dist/ directory of the posthog-js npm package (npm install posthog-js), or "
    "nox -s demo in a clone of posthog-identity."
)
# Shown by the page itself when posthog-js is not there once the page has loaded
# (a blocked or unreachable CDN fails the script; a silent one is given 10 s).
_MISSING_CHECK = (
    "<script>(function(){function check(){var p=window.posthog;if(!(p&&p.__loaded)){"
    "document.getElementById('posthog-js-missing').hidden=false;}}"
    "addEventListener('load',function(){setTimeout(check,1000);});setTimeout(check,10000);"
    "})();</script>"
)

_FILES = resources.files("posthog_identity") / "demo_files"
_STYLE = (_FILES / "style.css").read_text(encoding="utf-8")
_EVENTS_PAGE = (
    (_FILES / "events.html").read_text(encoding="utf-8")
    + "<script>"
    + (_FILES / "events.js").read_text(encoding="utf-8")
    + "</script>"
)


class DemoSite:
    """The demo's pages; who is logged in lives in a signed demo cookie."""

    def __init__(
        self,
        sink: Sink | None,
        client: Client | None,
        notes: list[str],
        script_url: str | None = None,
    ) -> None:
        self.sink = sink
        self.client = client
        self.notes = notes
        #: where the page loads posthog-js from; None when no snippet is injected
        self.script_url = script_url
        self.transitions: deque[dict[str, str]] = deque(maxlen=50)
        self._lock = threading.Lock()
        self.middleware: IdentityMiddleware | None = None
        self._logins = URLSafeSerializer(secrets.token_urlsafe(32), salt="demo-login")

    def logged_in(self, environ: WSGIEnvironment) -> object:
        """The demo's own 'authentication': the user name in its signed cookie."""
        request = Request(environ)
        raw = request.cookies.get(_LOGIN_COOKIE)
        if not raw:
            return None
        try:
            return self._logins.loads(raw)
        except BadSignature:
            return None

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        response = self.route(request)
        self._remember_transition()
        return response(environ, start_response)

    def route(self, request: Request) -> Response:
        path = request.path
        if path == "/":
            return self.page(
                "Home",
                "<p>Browse around, log in with any name, log out, and watch "
                "<a href='/events'>the events</a>.</p>",
            )
        if path == "/page":
            self.capture("Page Viewed", {"page": "/page"})
            return self.page(
                "A page",
                "<p>This view called <code>posthog.capture('Page Viewed')</code> "
                "with no distinct id: it carries the request's.</p>",
            )
        if path == "/login" and request.method == "POST":
            name = request.form.get("name", "").strip()[:100]
            if not name:
                return self.page("Log in", self.login_form("Please type a name."))
            identify_user(name)
            self.capture("Logged In", {})
            response = redirect("/")
            response.set_cookie(
                _LOGIN_COOKIE, self._logins.dumps(name), httponly=True, samesite="Lax"
            )
            return response
        if path == "/login":
            return self.page("Log in", self.login_form(""))
        if path == "/logout":
            forget_user()
            response = redirect("/")
            response.delete_cookie(_LOGIN_COOKIE)
            return response
        if path == "/events":
            return self.page("Events", _EVENTS_PAGE)
        if path == "/events.json":
            return Response(json.dumps(self.snapshot(request)), content_type="application/json")
        return self.page("Not found", "<p>Nothing here.</p>", status=404)

    def capture(self, event: str, properties: Mapping[str, Any]) -> None:
        if self.client is not None:
            self.client.capture(event, properties=dict(properties))

    def login_form(self, error: str) -> str:
        problem = f"<p class='note'>{html.escape(error)}</p>" if error else ""
        return (
            f"{problem}<form method='post' action='/login'><label>Name "
            "<input name='name' autofocus required></label> <button>Log in</button></form>"
        )

    def page(self, title: str, body: str, status: int = 200) -> Response:
        identity = current_identity()
        who = "nobody yet"
        if identity is not None:
            who = (
                f"user <code>{html.escape(identity.user_id)}</code>"
                if identity.user_id
                else f"anonymous <code>{identity.anonymous_id}</code>"
            )
        notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in self.notes)
        if self.script_url is not None:
            missing = (
                f"posthog-js did not load from {self.script_url}, so this page sends no browser "
                f"events. {_OFFLINE_HINT}"
            )
            notes += (
                f"<p class='note' id='posthog-js-missing' hidden>{html.escape(missing)}</p>"
                + _MISSING_CHECK
            )
        document = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)} · "
            f"posthog-identity demo</title><style>{_STYLE}</style></head><body>"
            "<nav><a href='/'>Home</a><a href='/page'>A page</a><a href='/login'>Log in</a>"
            f"<a href='/logout'>Log out</a><a href='/events'>Events</a></nav>"
            f"<h1>{html.escape(title)}</h1><p>You are {who}.</p>{body}{notes}</body></html>"
        )
        return Response(document, status=status, content_type="text/html; charset=utf-8")

    def _remember_transition(self) -> None:
        resolution = current_resolution()
        if resolution is None or resolution.transition.value == "none":
            return
        identity = resolution.identity
        entry = {
            "time": _now(),
            "transition": resolution.transition.value,
            "anonymous_id": identity.anonymous_id,
            "user_id": identity.user_id or "",
            "link": f"{resolution.link.anonymous_id} -> {resolution.link.user_id}"
            if resolution.link
            else "",
        }
        with self._lock:
            self.transitions.appendleft(entry)

    def snapshot(self, request: Request) -> dict[str, Any]:
        """Events grouped by distinct id, the cookie's state, the recent transitions."""
        events = self.sink.events() if self.sink is not None else []
        groups: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            distinct_id = str(
                event.get("distinct_id") or event.get("properties", {}).get("distinct_id")
            )
            groups.setdefault(distinct_id, []).append(
                {
                    "time": str(event.get("timestamp", "")),
                    "event": event.get("event"),
                    "source": "browser"
                    if event.get("properties", {}).get("$lib") == "web"
                    else "server",
                    "alias": event.get("properties", {}).get("alias")
                    or event.get("properties", {}).get("$anon_distinct_id")
                    or "",
                }
            )
        return {
            "sink": self.sink is not None,
            "cookie": self.cookie_state(request),
            "transitions": list(self.transitions),
            "groups": groups,
        }

    def cookie_state(self, request: Request) -> dict[str, Any] | None:
        if self.middleware is None:
            return None
        engine = self.middleware.engine
        verified = engine.read_cookie(request.headers.get("Cookie", ""))
        if verified is None:
            return None
        state = verified.state
        return {
            "anonymous_id": state.anonymous_id,
            "user_hash": state.user_hash.hex() if state.user_hash else None,
            "linked": state.linked,
            "issued_at": datetime.fromtimestamp(state.issued_at, timezone.utc).isoformat(),
        }


class _QuietHandler(WSGIRequestHandler):
    """No access log: the terminal shows one line per event, nothing else."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def redirect(location: str) -> Response:
    return Response("", status=303, headers={"Location": location})


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%H:%M:%S")


def find_posthog_js(directory: str | os.PathLike[str]) -> Path:
    """posthog-js's `dist/` directory: `directory` itself, or its `dist/` (the npm package).

    :raises ValueError: when neither holds `array.js`.
    """
    given = Path(directory)
    for candidate in (given, given / "dist"):
        if (candidate / "array.js").is_file():
            return candidate.resolve()
    raise ValueError(
        f"no array.js in {given} or {given / 'dist'}: give the posthog-js npm package "
        "(node_modules/posthog-js) or its dist/ directory"
    )


def _version(dist: Path) -> str:
    """posthog-js's version from its package.json, next to `dist/`, when there is one."""
    try:
        package = json.loads((dist.parent / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    version = package.get("version") if isinstance(package, dict) else None
    return f" {version}" if isinstance(version, str) else ""


def build(
    environ: Mapping[str, str], out: TextIO, posthog_js: Path | None = None
) -> tuple[IdentityMiddleware, Sink | None, Client]:
    """The demo wired for this environment: embedded sink unless a real key is set.

    With `posthog_js` (its `dist/` directory) the sink also serves posthog-js,
    and the pages load it from there: no internet needed.
    """
    env = dict(environ)
    notes: list[str] = []
    sink: Sink | None = None
    if not (env.get("POSTHOG_API_KEY") or env.get("POSTHOG_PROJECT_API_KEY")):
        sink = Sink(
            static_dir=posthog_js,
            on_event=lambda event: print(format_event(event), file=out, flush=True),
        ).start()
        env["POSTHOG_API_KEY"] = DEMO_API_KEY
        env["POSTHOG_HOST"] = sink.url
        if posthog_js is not None:
            env.setdefault("POSTHOG_IDENTITY_SCRIPT_URL", f"{sink.url}/static/array.js")
            where = f"posthog-js{_version(posthog_js)} comes from {posthog_js}, served by the sink"
        else:
            env.setdefault("POSTHOG_IDENTITY_SCRIPT_URL", DEMO_SCRIPT_URL)
            where = (
                "posthog-js loads from PostHog's CDN when your browser can reach it "
                "(offline: --posthog-js DIR)"
            )
        notes.append(
            f"No POSTHOG_API_KEY: every event goes to the demo's own sink at {sink.url}, "
            f"shown on the Events page. {where}."
        )
    elif posthog_js is not None:
        notes.append(
            "--posthog-js is ignored: with POSTHOG_API_KEY set, events and posthog-js "
            "come from PostHog as configured."
        )
    if not env.get("POSTHOG_IDENTITY_SECRET"):
        env["POSTHOG_IDENTITY_SECRET"] = secrets.token_urlsafe(32)
        notes.append(
            "No POSTHOG_IDENTITY_SECRET: the demo generated one for this run, so cookies "
            "from an earlier run read as new visitors."
        )
    settings = Settings.from_env(env)
    client = Client(settings.api_key or DEMO_API_KEY, host=settings.host, flush_interval=0.2)
    site = DemoSite(sink, client, notes)
    middleware = IdentityMiddleware(site, settings, user_id=site.logged_in, client=client)
    snippet = middleware.engine.snippet
    site.script_url = None if snippet is None else snippet.script_url
    site.middleware = middleware
    return middleware, sink, client


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    posthog_js: Path | None = None,
) -> int:
    """Run the demo until interrupted; one line per event on `out`.

    `posthog_js`: posthog-js's `dist/` directory, served by the embedded sink.
    """
    out = sys.stdout if out is None else out
    app, sink, client = build(os.environ if environ is None else environ, out, posthog_js)
    server = make_server(host, port, app, threaded=True, request_handler=_QuietHandler)
    print(
        f"posthog-identity demo on http://{host}:{server.server_port}/  (Ctrl+C to stop)",
        file=out,
        flush=True,
    )
    script_url = app.engine.snippet.script_url if app.engine.snippet is not None else None
    if script_url is not None:
        print(f"pages load posthog-js from {script_url}", file=out, flush=True)
    if sink is not None:
        print(
            f"events go to the embedded sink at {sink.url}; one line per event below",
            file=out,
            flush=True,
        )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        client.shutdown()
        if sink is not None:
            sink.stop()
    return 0
