"""`posthog-identity check`: the effective configuration and the mistakes it flags."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from posthog_identity.cli import INVALID, OK, PROBLEMS, check, main
from posthog_identity.testing import Sink

GOOD = {
    "POSTHOG_IDENTITY_SECRET": "k" * 40,
    "POSTHOG_API_KEY": "phc_abcdef",
    "POSTHOG_HOST": "https://eu.i.posthog.com",
}


def run(env: dict[str, str], **options: object) -> tuple[int, str]:
    out = io.StringIO()
    code = check(env, out=out, **options)  # type: ignore[arg-type]
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


def test_ping_passes_when_the_host_answers() -> None:
    with Sink() as sink:
        code, text = run({**GOOD, "POSTHOG_HOST": sink.url}, ping=True, timeout=5.0)
    assert code == OK, text


def test_ping_fails_when_nothing_listens() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, text = run({**GOOD, "POSTHOG_HOST": f"http://127.0.0.1:{port}"}, ping=True, timeout=2.0)
    assert code == PROBLEMS
    assert "did not answer within 2s" in text


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
    assert "the newest secret has 4 characters" in done.stdout


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
    assert info.value.code == 2


def test_the_printed_configuration_has_every_setting_and_masks_the_personal_key() -> None:
    from posthog_identity.settings import ENV_VARS

    code, text = run({**GOOD, "POSTHOG_PERSONAL_API_KEY": "phx_private_value"})
    assert code == OK
    missing = [variable for variable in ENV_VARS.values() if f"  {variable} " not in text]
    assert missing == []
    assert "phx_private_value" not in text
    assert "POSTHOG_PERSONAL_API_KEY" in text
