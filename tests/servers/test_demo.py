"""The demo, run as a newcomer runs it: a subprocess, walked through by an HTTP client."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from posthog_identity.demo import build, find_posthog_js
from tests.helpers.demo import Demo, demo_environment
from tests.helpers.pages import snippet_options


@pytest.fixture
def demo() -> Iterator[Demo]:
    running = Demo(demo_environment())
    yield running
    assert running.stop() == 0


def identity_cookie(response: httpx.Response) -> str | None:
    for header in response.headers.get_list("set-cookie"):
        if header.startswith("ph_identity="):
            return header.split(";", 1)[0].split("=", 1)[1]
    return None


def events(client: httpx.Client, predicate: Any, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        snapshot = client.get("/events.json").json()
        if predicate(snapshot) or time.monotonic() > deadline:
            return snapshot
        time.sleep(0.1)


def test_the_demo_walks_a_visitor_through_login_and_logout(demo: Demo) -> None:
    with httpx.Client(base_url=demo.url, follow_redirects=False) as client:
        home = client.get("/")
        assert home.status_code == 200
        assert "No POSTHOG_API_KEY" in home.text, "the embedded sink is said on screen"
        assert "generated one for this run" in home.text
        assert "<script data-posthog-identity" in home.text
        first = identity_cookie(home)
        assert first is not None

        login = client.post("/login", data={"name": "ada"})
        assert login.status_code == 303
        snapshot = events(client, lambda s: "$create_alias" in str(s["groups"].get("ada", "")))
        anonymous = snapshot["cookie"]["anonymous_id"]
        (alias,) = [e for e in snapshot["groups"]["ada"] if e["event"] == "$create_alias"]
        assert alias["alias"] == anonymous
        assert snapshot["transitions"][0]["transition"] == "login"

        assert client.get("/page").status_code == 200
        events(
            client, lambda s: any(e["event"] == "Page Viewed" for e in s["groups"].get("ada", []))
        )

        logout = client.get("/logout")
        assert logout.status_code == 303
        after = events(
            client, lambda s: s["transitions"] and s["transitions"][0]["transition"] == "logout"
        )
        assert after["cookie"]["anonymous_id"] != anonymous
        assert after["cookie"]["user_hash"] is None
        assert "Events" in client.get("/events").text

    demo.wait_for_line(re.compile(r"\$create_alias distinct_id=ada alias=" + re.escape(anonymous)))
    demo.wait_for_line(re.compile(r"Page Viewed\" distinct_id=ada"))


def test_a_broken_login_form_asks_again(demo: Demo) -> None:
    with httpx.Client(base_url=demo.url) as client:
        response = client.post("/login", data={"name": "   "})
        assert response.status_code == 200
        assert "Please type a name." in response.text
        assert client.get("/nowhere").status_code == 404


@pytest.fixture
def posthog_js(tmp_path: Path) -> Path:
    """An npm package of posthog-js as the demo finds it: `dist/array.js` and its version."""
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / "array.js").write_text("/* posthog-js */", encoding="utf-8")
    (tmp_path / "package.json").write_text('{"version": "1.449.2"}', encoding="utf-8")
    return tmp_path


def test_given_posthog_js_the_pages_load_it_from_the_demos_sink_with_cors(
    posthog_js: Path,
) -> None:
    demo = Demo(demo_environment(), "--posthog-js", str(posthog_js))
    try:
        served = demo.wait_for_line(re.compile(r"pages load posthog-js from (\S+)")).group(1)
        with httpx.Client(base_url=demo.url) as client:
            home = client.get("/")
            script = client.get(served, headers={"Origin": demo.url})  # crossorigin="anonymous"
    finally:
        assert demo.stop() == 0

    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/static/array\.js", served)
    assert served != f"{demo.url}/static/array.js", "served by the sink, not the demo site"
    assert snippet_options(home.content)["src"] == served, "the snippet loads it from there"
    assert f"posthog-js 1.449.2 comes from {posthog_js / 'dist'}, served by the sink" in home.text
    assert (script.status_code, script.text) == (200, "/* posthog-js */")
    assert script.headers["Access-Control-Allow-Origin"] == demo.url


def test_without_posthog_js_the_page_carries_a_hidden_line_for_when_the_cdn_fails(
    demo: Demo,
) -> None:
    with httpx.Client(base_url=demo.url) as client:
        home = client.get("/").text

    [line] = re.findall(r"<p class='note' id='posthog-js-missing' hidden>([^<]*)</p>", home)
    assert line.startswith(
        "posthog-js did not load from https://us-assets.i.posthog.com/static/array.js"
    )
    assert "--posthog-js DIR" in line
    assert "nox -s demo" in line


# -- finding posthog-js, and what the pages say about it (in process) -------------


@pytest.mark.parametrize("given", ["package", "dist"])
def test_posthog_js_is_found_from_its_npm_package_or_its_dist(posthog_js: Path, given: str) -> None:
    directory = posthog_js if given == "package" else posthog_js / "dist"
    assert find_posthog_js(directory) == (posthog_js / "dist").resolve()


def test_a_dist_without_a_package_json_is_served_without_a_version(tmp_path: Path) -> None:
    (tmp_path / "array.js").write_text("/* posthog-js */", encoding="utf-8")
    app, sink, client = build({}, io.StringIO(), find_posthog_js(tmp_path))
    try:
        assert app.engine.snippet is not None
        assert app.engine.snippet.script_url == f"{sink.url}/static/array.js"
        notes = " ".join(app.app.notes)
        assert f"posthog-js comes from {tmp_path.resolve()}, served by the sink" in notes
    finally:
        client.shutdown()
        assert sink is not None
        sink.stop()


def test_with_a_real_key_posthog_js_is_not_served_and_the_page_says_so(posthog_js: Path) -> None:
    env = {"POSTHOG_API_KEY": "phc_real", "POSTHOG_HOST": "https://eu.i.posthog.com"}
    app, sink, client = build(env, io.StringIO(), find_posthog_js(posthog_js))
    try:
        assert sink is None
        assert app.engine.snippet is not None
        assert app.engine.snippet.script_url.startswith("https://eu-assets.i.posthog.com/")
        assert any("--posthog-js is ignored" in note for note in app.app.notes)
    finally:
        client.shutdown()
