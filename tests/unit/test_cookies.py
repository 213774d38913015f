"""The cookies: `CookieWriter`'s prebuilt lines are werkzeug's `dump_cookie` output to the byte,
and `find_identity` / `all_cookies` read a Cookie header as a browser sends it.
"""

from __future__ import annotations

import logging
import types
import uuid

import pytest
from werkzeug.http import dump_cookie

from posthog_identity import cookies
from posthog_identity.cookies import CookieWriter, all_cookies, find_identity
from posthog_identity.settings import Settings
from posthog_identity.signing import CookieCodec, CookieState
from tests.helpers.project import SECRET
from tests.helpers.wire import COOKIE, parse_set_cookie

NOW = 1_700_000_000
CODEC = CookieCodec((SECRET,))
GOOD = CODEC.dumps(CookieState(str(uuid.uuid4()), issued_at=NOW))
OTHER = CODEC.dumps(CookieState(str(uuid.uuid4()), b"12345678", True, NOW))


class Clock:
    """The wall clock the writer reads, set by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(NOW)
    monkeypatch.setattr(cookies, "time", types.SimpleNamespace(time=clock.time))
    return clock


SETTINGS = [
    pytest.param(Settings(secrets=(SECRET,)), id="defaults"),
    pytest.param(
        Settings(
            secrets=(SECRET,),
            cookie_name="sid",
            cookie_domain="example.com",
            cookie_max_age=3600,
            cookie_samesite="Strict",
        ),
        id="name-domain-max-age-strict",
    ),
    pytest.param(Settings(secrets=(SECRET,), cookie_samesite="None"), id="samesite-none"),
]
SECURE = pytest.mark.parametrize("secure", [False, True], ids=["http", "https"])


def dumped(
    settings: Settings, name: str, value: str, *, expires: int, secure: bool, httponly: bool
) -> str:
    """`dump_cookie`'s line with the settings' attributes; expiring at 0 deletes."""
    return dump_cookie(
        name,
        value,
        max_age=0 if expires == 0 else settings.cookie_max_age,
        expires=expires,
        path="/",
        domain=settings.cookie_domain,
        secure=secure,
        httponly=httponly,
        samesite=settings.cookie_samesite,
    )


@SECURE
@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.usefixtures("clock")
def test_the_identity_line_is_dump_cookies_line_for_the_same_arguments(
    settings: Settings, secure: bool
) -> None:
    expires = NOW + settings.cookie_max_age
    expected = dumped(
        settings, settings.cookie_name, GOOD, expires=expires, secure=secure, httponly=True
    )

    assert CookieWriter(settings).identity(GOOD, secure=secure) == expected


@SECURE
@pytest.mark.parametrize("settings", SETTINGS)
def test_the_deletion_line_is_an_empty_cookie_expired_at_the_epoch(
    settings: Settings, secure: bool
) -> None:
    expected = dumped(settings, settings.cookie_name, "", expires=0, secure=secure, httponly=True)

    assert CookieWriter(settings).delete_identity(secure=secure) == expected


@SECURE
@pytest.mark.parametrize("granted", [True, False], ids=["granted", "denied"])
@pytest.mark.usefixtures("clock")
def test_the_consent_line_records_the_first_spelling_and_is_readable_by_scripts(
    granted: bool, secure: bool
) -> None:
    settings = Settings(
        secrets=(SECRET,),
        consent="opt-in",
        consent_cookie="banner",
        consent_granted=("yes", "granted"),
        consent_denied=("no", "denied"),
        cookie_domain="example.com",
    )
    value, expires = "yes" if granted else "no", NOW + settings.cookie_max_age
    expected = dumped(settings, "banner", value, expires=expires, secure=secure, httponly=False)

    assert CookieWriter(settings).consent(granted, secure=secure) == expected


def test_the_expiry_date_follows_the_clocks_whole_second(clock: Clock) -> None:
    writer = CookieWriter(Settings(secrets=(SECRET,), cookie_max_age=60))

    def expires() -> tuple[str | None, str | None]:
        identity = parse_set_cookie(writer.identity(GOOD, secure=False))
        consent = parse_set_cookie(writer.consent(True, secure=False))
        return identity.attributes["expires"], consent.attributes["expires"]

    clock.now = 0.2
    first = expires()
    clock.now = 0.9
    same_second = expires()
    clock.now = 1.0
    next_second = expires()

    assert first == same_second == ("Thu, 01 Jan 1970 00:01:00 GMT",) * 2
    assert next_second == ("Thu, 01 Jan 1970 00:01:01 GMT",) * 2


def test_the_codecs_value_is_written_unquoted_and_reads_back() -> None:
    line = CookieWriter(Settings(secrets=(SECRET,))).identity(GOOD, secure=True)
    written = parse_set_cookie(line)

    assert (written.name, written.value) == (COOKIE, GOOD)
    assert find_identity(f"{written.name}={written.value}", COOKIE, CODEC) is not None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"ph_identity={GOOD}", GOOD),
        (f"a=1; ph_identity={GOOD}; b=2", GOOD),
        (f"a=1;ph_identity={GOOD}", GOOD),
        (f"a=1;\tph_identity={GOOD}", GOOD),
        (f'ph_identity="{GOOD}"', GOOD),
        (f"ph_identity=  {GOOD}  ; b=2", GOOD),
        (f"ph_identity=forged; ph_identity={GOOD}", GOOD),
        (f"ph_identity={OTHER}; ph_identity={GOOD}", OTHER),
        (f"xph_identity={GOOD}", None),
        (f"a=ph_identity={GOOD}", None),
        (f"ph_identity_old={GOOD}", None),
        (f"ph_identity={GOOD[:-2]}", None),
        ("ph_identity=", None),
        ("", None),
    ],
    ids=[
        "alone",
        "among-others",
        "no-space",
        "after-a-tab",
        "quoted",
        "padded",
        "first-forged",
        "first-of-two-valid",
        "name-suffix",
        "inside-a-value",
        "name-prefix",
        "tampered",
        "empty-value",
        "empty-header",
    ],
)
def test_find_identity_takes_the_first_whole_named_cookie_that_verifies(
    header: str, expected: str | None
) -> None:
    found = find_identity(header, COOKIE, CODEC)

    assert found == (None if expected is None else CODEC.loads(expected))


def test_find_identity_reads_the_configured_name_only() -> None:
    header = f"ph_identity={OTHER}; sid={GOOD}"

    assert find_identity(header, "sid", CODEC) == CODEC.loads(GOOD)


def test_an_identity_cookie_that_does_not_verify_is_logged_and_an_absent_one_is_not(
    caplog_identity: pytest.LogCaptureFixture,
) -> None:
    assert find_identity("session=abc", COOKIE, CODEC) is None
    assert caplog_identity.records == []

    assert find_identity("ph_identity=forged", COOKIE, CODEC) is None
    [record] = caplog_identity.records
    assert record.levelno == logging.DEBUG
    assert "no valid identity cookie" in record.getMessage()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("a=1; b=2", {"a": "1", "b": "2"}),
        ('ph_consent="granted"; x=', {"ph_consent": "granted", "x": ""}),
        # Servers hand headers over decoded as latin-1: UTF-8 bytes read as text.
        ("name=" + "zoë".encode().decode("latin-1"), {"name": "zoë"}),
        ("", {}),
    ],
    ids=["plain", "quoted-and-empty", "utf-8", "empty"],
)
def test_all_cookies_reads_every_cookie(header: str, expected: dict[str, str]) -> None:
    assert dict(all_cookies(header)) == expected


def test_a_header_that_is_not_utf8_reads_as_no_cookies_and_is_logged(
    caplog_identity: pytest.LogCaptureFixture,
) -> None:
    assert all_cookies("ph_consent=granted; bad=\xff") == {}
    assert "not UTF-8" in caplog_identity.text
