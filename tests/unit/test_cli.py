"""`posthog-identity`: `check`'s effective configuration and the mistakes it flags;
ports, `--version`, stderr and exit codes of every command."""

from __future__ import annotations

import http.server
import io
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from posthog_identity import __version__
from posthog_identity.cli import INVALID, OK, PROBLEMS, USAGE, check, main
from posthog_identity.testing import Sink
from tests.helpers.faults import FaultyHost

GOOD = {
    "POSTHOG_IDENTITY_SECRET": "k" * 40,
    "POSTHOG_API_KEY": "phc_abcdef",
    "POSTHOG_HOST": "https://eu.i.posthog.com",
}


def run(env: dict[str, str], **options: object) -> tuple[int, str]:
    out = io.StringIO()
    code = check(env, out=out, err=out, **options)  # type: ignore[arg-type]
    return code, out.getvalue()


def test_a_good_configuration_passes_and_is_printed_with_the_secret_masked() -> None:
    code, text = run(GOOD)
    assert code == OK
    assert "k" * 40 not in text
    assert "1 secret(s), newest 40 characters (masked)" in text
    assert "POSTHOG_HOST" in text
    assert "https://eu.i.posthog.com" in text
    assert text.rstrip().endswith("ok: the configuration looks right.")


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ({"POSTHOG_IDENTITY_SECRET": "short"}, PROBLEMS, "the newest secret has 5 characters"),
        ({"POSTHOG_API_KEY": "phx_personal"}, PROBLEMS, "is a personal API key"),
        ({"POSTHOG_HOST": "http://posthog.example.com"}, PROBLEMS, "is not https"),
        (
            {"POSTHOG_IDENTITY_COOKIE_SAMSITE": "None"},
            PROBLEMS,
            "did you mean POSTHOG_IDENTITY_COOKIE_SAMESITE?",
        ),
        (
            {"POSTHOG_IDENTITY_WHATEVER": "1"},
            PROBLEMS,
            "POSTHOG_IDENTITY_WHATEVER is not a posthog-identity setting",
        ),
        (
            {"POSTHOG_IDENTITY_COOKIE_SAMESITE": "None", "POSTHOG_IDENTITY_COOKIE_SECURE": "false"},
            INVALID,
            "error: POSTHOG_IDENTITY_COOKIE_SAMESITE: SameSite=None requires a Secure cookie",
        ),
        ({"POSTHOG_IDENTITY_SECRET": ""}, INVALID, "error: POSTHOG_IDENTITY_SECRET: is required"),
        ({"POSTHOG_IDENTITY_INJECT": "maybe"}, INVALID, "error: POSTHOG_IDENTITY_INJECT"),
    ],
    ids=[
        "short-secret",
        "personal-key",
        "plain-http",
        "typo",
        "unknown",
        "samesite-none-insecure",
        "no-secret",
        "bad-bool",
    ],
)
def test_mistakes_are_flagged_with_a_non_zero_exit(
    change: dict[str, str], code: int, message: str
) -> None:
    actual, text = run({**GOOD, **change})
    assert actual == code
    assert message in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"POSTHOG_API_KEY": ""}, "no events are sent"),
        ({"POSTHOG_API_KEY": "abc"}, "does not look like a project key"),
        ({"POSTHOG_IDENTITY_COOKIE_SAMESITE": "None"}, "the cookie is always Secure"),
        ({"POSTHOG_IDENTITY_DISABLED": "true"}, "passes everything through"),
    ],
    ids=["no-key", "odd-key", "samesite-none", "disabled"],
)
def test_warnings_do_not_fail(change: dict[str, str], message: str) -> None:
    code, text = run({**GOOD, **change})
    assert code == OK
    assert "warning: " in text
    assert message in text


@pytest.mark.parametrize(
    "host", ["http://localhost:8000", "http://127.0.0.1:9", "http://[::1]:8000"]
)
def test_plain_http_is_fine_on_this_machine(host: str) -> None:
    assert run({**GOOD, "POSTHOG_HOST": host})[0] == OK


def test_ping_passes_when_the_host_answers_and_says_what_answered() -> None:
    with Sink() as sink:
        code, text = run({**GOOD, "POSTHOG_HOST": sink.url}, ping=True, timeout=5.0)
    assert code == OK, text
    assert f"ping: POST {sink.url}/flags/?v=2: 200 OK (server: posthog-identity-sink" in text


@pytest.mark.parametrize(
    ("fault", "told"),
    [
        ("404", "POSTHOG_HOST: POST {url}/nowhere/flags/?v=2 answered 404 Not Found (server: "),
        ("500", "POSTHOG_HOST: POST {url}/flags/?v=2 answered 500 Internal Server Error"),
        ("refused", "POSTHOG_HOST: POST {url}/flags/?v=2: connection refused: nothing listens"),
        ("tls", "POSTHOG_HOST: POST {url}/flags/?v=2: TLS failure: the TLS handshake with"),
        ("dns", "POSTHOG_HOST: POST {url}/flags/?v=2: DNS failure: eu.posthog-identity.invalid"),
        ("timeout", "POSTHOG_HOST: POST {url}/flags/?v=2: timeout: no answer within 1s"),
    ],
    ids=["404", "500", "refused", "tls", "dns", "timeout"],
)
def test_ping_fails_naming_why_when_the_host_answers_an_error_or_nothing(
    fault: str, told: str
) -> None:
    with Sink() as sink:
        faulty = {f: FaultyHost(f) for f in ("500", "refused", "hang")}
        try:
            url = {
                "404": sink.url,
                "500": faulty["500"].url,
                "refused": faulty["refused"].url,
                "tls": sink.url.replace("http://", "https://"),
                "dns": "https://eu.posthog-identity.invalid",
                "timeout": faulty["hang"].url,
            }[fault]
            host = f"{url}/nowhere" if fault == "404" else url
            code, text = run({**GOOD, "POSTHOG_HOST": host}, ping=True, timeout=1.0)
        finally:
            for running in faulty.values():
                running.close()

    assert code == PROBLEMS, text
    assert f"error: {told.format(url=url)}" in text
    assert "ok: the configuration looks right." not in text


class _Unauthorized(http.server.BaseHTTPRequestHandler):
    """What PostHog answers a flags request whose key is of no project on the host."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_ping_answered_401_asks_whether_the_key_belongs_to_the_host() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unauthorized)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        code, text = run({**GOOD, "POSTHOG_HOST": url}, ping=True, timeout=5.0)
    finally:
        server.shutdown()
        thread.join()
        server.server_close()

    assert code == PROBLEMS, text
    assert f"error: POSTHOG_HOST: POST {url}/flags/?v=2 answered 401 Unauthorized (server: " in text
    assert "is POSTHOG_API_KEY a key of a project on this host?" in text


def test_ping_without_an_api_key_asks_nothing_and_says_so() -> None:
    env = {k: v for k, v in GOOD.items() if k != "POSTHOG_API_KEY"}
    code, text = run({**env, "POSTHOG_HOST": "http://127.0.0.1:9"}, ping=True, timeout=1.0)
    assert code == OK, text
    assert "warning: --ping: without POSTHOG_API_KEY nothing is sent, so nothing was asked" in text


def test_check_flags_a_short_secret_once_and_logs_no_start_up_warning() -> None:
    env = {"PATH": "/usr/bin:/bin", **GOOD, "POSTHOG_IDENTITY_SECRET": "tiny"}
    done = subprocess.run(
        [sys.executable, "-m", "posthog_identity", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stderr.count("POSTHOG_IDENTITY_SECRET") == 1, done.stderr
    assert done.stderr.startswith("error: POSTHOG_IDENTITY_SECRET: the newest secret has 4")


def test_the_console_entry_point_reads_the_process_environment() -> None:
    env = {"PATH": "/usr/bin:/bin", **GOOD, "POSTHOG_IDENTITY_SECRET": "tiny"}
    done = subprocess.run(
        [sys.executable, "-m", "posthog_identity", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == PROBLEMS
    assert "the newest secret has 4 characters" in done.stderr


def test_main_dispatches_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in GOOD.items():
        monkeypatch.setenv(name, value)
    assert main(["check"]) == OK
    assert "Effective configuration" in capsys.readouterr().out


def test_an_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == USAGE


def test_the_printed_configuration_has_every_setting_and_masks_the_personal_key() -> None:
    from posthog_identity.settings import ENV_VARS

    code, text = run({**GOOD, "POSTHOG_PERSONAL_API_KEY": "phx_private_value"})
    assert code == OK
    missing = [variable for variable in ENV_VARS.values() if f"  {variable} " not in text]
    assert missing == []
    assert "phx_private_value" not in text
    assert "POSTHOG_PERSONAL_API_KEY" in text


# ---------------------------------------------------------------------------
# The command line as a user runs it


def posthog_identity(
    *arguments: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m posthog_identity`` with `arguments`, in `env` (default: GOOD)."""
    return subprocess.run(
        [sys.executable, "-m", "posthog_identity", *arguments],
        env={"PATH": "/usr/bin:/bin", **(GOOD if env is None else env)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version_prints_the_package_version() -> None:
    done = posthog_identity("--version")

    assert done.returncode == OK
    assert done.stdout == f"posthog-identity {__version__}\n"


BAD_PORTS = [
    ("demo", "99999"),
    ("demo", "-1"),
    ("demo", "http"),
    ("sink", "99999"),
    ("sink", "65536"),
]


@pytest.mark.parametrize(
    ("command", "port"), BAD_PORTS, ids=[f"{command}-{port}" for command, port in BAD_PORTS]
)
def test_a_port_out_of_range_is_a_usage_error_in_one_line(command: str, port: str) -> None:
    done = posthog_identity(command, f"--port={port}")

    assert done.returncode == USAGE
    assert "Traceback" not in done.stderr
    *_, last = done.stderr.splitlines()
    assert last == (
        f"posthog-identity {command}: error: argument --port: "
        f"{port!r} is not a port number (1-65535, or 0 for any free port)"
    )


def test_a_posthog_js_directory_without_array_js_is_a_usage_error_in_one_line(
    tmp_path: Path,
) -> None:
    done = posthog_identity("demo", "--posthog-js", str(tmp_path))

    assert done.returncode == USAGE
    *_, last = done.stderr.splitlines()
    assert last == (
        f"posthog-identity demo: error: argument --posthog-js: no array.js in {tmp_path} or "
        f"{tmp_path / 'dist'}: give the posthog-js npm package (node_modules/posthog-js) or "
        "its dist/ directory"
    )


def test_check_prints_the_configuration_on_stdout_and_problems_on_stderr() -> None:
    done = posthog_identity("check", env={**GOOD, "POSTHOG_IDENTITY_SECRET": "tiny"})

    assert "Effective configuration" in done.stdout
    assert "error:" not in done.stdout
    assert "error: POSTHOG_IDENTITY_SECRET: the newest secret has 4 characters" in done.stderr


def test_an_invalid_configuration_exits_apart_from_a_usage_error() -> None:
    invalid = posthog_identity("check", env={**GOOD, "POSTHOG_IDENTITY_INJECT": "maybe"})
    usage = posthog_identity("check", "--frobnicate")

    assert (invalid.returncode, usage.returncode) == (INVALID, USAGE)
    assert INVALID != USAGE


def test_check_lists_every_invalid_variable() -> None:
    env = {
        **GOOD,
        "POSTHOG_IDENTITY_INJECT": "maybe",
        "POSTHOG_IDENTITY_COOKIE_MAX_AGE": "a year",
        "POSTHOG_IDENTITY_COOKIE_SAMESITE": "sideways",
    }

    code, text = run(env)

    assert code == INVALID
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert [line.split(":")[1].strip() for line in errors] == [
        "POSTHOG_IDENTITY_COOKIE_MAX_AGE",
        "POSTHOG_IDENTITY_COOKIE_SAMESITE",
        "POSTHOG_IDENTITY_INJECT",
    ]


@pytest.mark.parametrize("command", [(), ("check",), ("demo",), ("sink",)], ids=repr)
def test_help_documents_the_exit_codes(command: tuple[str, ...]) -> None:
    done = posthog_identity(*command, "--help")

    assert done.returncode == OK
    assert "exit codes:" in done.stdout
    assert "  2  usage error" in done.stdout


def test_the_demo_refuses_an_invalid_configuration_in_one_line_per_variable() -> None:
    done = posthog_identity("demo", "--port=0", env={"POSTHOG_IDENTITY_COOKIE_MAX_AGE": "soon"})

    assert done.returncode == INVALID
    assert done.stderr.splitlines() == [
        "posthog-identity demo: error: POSTHOG_IDENTITY_COOKIE_MAX_AGE: "
        "expected a whole number of seconds, got 'soon'"
    ]


def test_the_demo_on_a_taken_port_says_so_without_a_traceback() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = posthog_identity("demo", f"--port={port}", env={})

    assert done.returncode == PROBLEMS
    assert "Traceback" not in done.stderr
    assert f"Port {port} is in use" in done.stderr


def test_check_describes_the_proxy() -> None:
    code, text = run({**GOOD, "POSTHOG_IDENTITY_PROXY_PATH": "/ingest"})
    assert code == OK, text
    assert (
        "proxy: /ingest/static/* and /ingest/array/* go to https://eu-assets.i.posthog.com" in text
    )


def test_check_shows_the_proxy_cap_each_server_kind_gets_when_unset() -> None:
    code, text = run({**GOOD, "POSTHOG_IDENTITY_PROXY_PATH": "/ingest"})
    assert code == OK, text
    assert re.search(
        r"POSTHOG_IDENTITY_PROXY_CONCURRENCY +\(32 in flight under ASGI, 2 under WSGI\)", text
    ), text


def test_check_ping_tries_posthog_through_the_proxy(tmp_path: Path) -> None:
    (tmp_path / "array.js").write_text("/* posthog-js */", encoding="utf-8")
    with Sink(static_dir=tmp_path) as sink:
        env = {**GOOD, "POSTHOG_HOST": sink.url, "POSTHOG_IDENTITY_PROXY_PATH": "/ingest"}
        code, text = run(env, ping=True, timeout=5.0)
    assert code == OK, text
    assert f"proxy: /ingest/flags/?v=2 -> {sink.url}/flags/?v=2: 200 OK (server: " in text
    assert f"proxy: /ingest/static/array.js -> {sink.url}/static/array.js: 200 OK" in text


def test_check_ping_through_the_proxy_names_an_unreachable_upstream() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **GOOD,
        "POSTHOG_HOST": f"http://127.0.0.1:{port}",
        "POSTHOG_IDENTITY_PROXY_PATH": "/ingest",
    }
    code, text = run(env, ping=True, timeout=2.0)
    assert code == PROBLEMS
    assert (
        f"error: POSTHOG_IDENTITY_PROXY_PATH: /ingest/flags/?v=2 -> http://127.0.0.1:{port}"
        "/flags/?v=2 gave no answer: connection refused: nothing listens at" in text
    )


def test_check_ping_through_the_proxy_without_an_api_key_asks_only_for_posthog_js(
    tmp_path: Path,
) -> None:
    (tmp_path / "array.js").write_text("/* posthog-js */", encoding="utf-8")
    env = {k: v for k, v in GOOD.items() if k != "POSTHOG_API_KEY"}
    with Sink(static_dir=tmp_path) as sink:
        env = {**env, "POSTHOG_HOST": sink.url, "POSTHOG_IDENTITY_PROXY_PATH": "/ingest"}
        code, text = run(env, ping=True, timeout=5.0)
    assert code == OK, text
    assert f"proxy: /ingest/static/array.js -> {sink.url}/static/array.js: 200 OK" in text
    assert sink.flag_requests() == []


def test_check_ping_fails_when_posthog_js_is_not_found_through_the_proxy() -> None:
    with Sink() as sink:  # no static directory: /static/array.js is a 404
        env = {**GOOD, "POSTHOG_HOST": sink.url, "POSTHOG_IDENTITY_PROXY_PATH": "/ingest"}
        code, text = run(env, ping=True, timeout=5.0)
    assert code == PROBLEMS, text
    assert (
        f"error: POSTHOG_IDENTITY_PROXY_PATH: /ingest/static/array.js -> {sink.url}"
        "/static/array.js answered 404 Not Found (server: posthog-identity-sink" in text
    )
    assert "ok: the configuration looks right." not in text


def test_check_says_which_events_are_kept_while_posthog_is_down_and_for_how_long() -> None:
    code, text = run(GOOD)
    assert code == OK, text
    assert (
        "delivery: login links PostHog does not accept are kept in memory and sent again "
        "(after 1 s, backing off to every 30 s) for up to 24 h, at most 10000 at a time "
        "(the oldest dropped first, with a warning); at shutdown they get up to 5 s, then "
        "those still pending are logged as lost. Other events get posthog's own retries, "
        "then are dropped."
    ) in text


def test_check_says_nothing_of_delivery_when_nothing_is_sent() -> None:
    code, text = run({k: v for k, v in GOOD.items() if k != "POSTHOG_API_KEY"})
    assert code == OK, text
    assert "delivery:" not in text


def test_check_prints_the_consent_settings() -> None:
    import io

    out = io.StringIO()
    env = {
        "POSTHOG_IDENTITY_SECRET": "k" * 40,
        "POSTHOG_API_KEY": "phc_x",
        "POSTHOG_IDENTITY_CONSENT": "opt-out",
    }
    check(env, out=out)
    text = out.getvalue()
    assert re.search(r"POSTHOG_IDENTITY_CONSENT\s+opt-out", text)
    assert re.search(r"POSTHOG_IDENTITY_CONSENT_GRANTED\s+granted, true, yes, 1", text)
    assert re.search(r"POSTHOG_IDENTITY_RESPECT_DNT\s+false", text)
