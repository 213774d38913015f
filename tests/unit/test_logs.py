"""`WarnOnce`: a warning on the library's logger the first time each kind is seen, never again."""

from __future__ import annotations

import logging

import pytest

from posthog_identity.logs import WarnOnce, logger


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


def test_the_first_warning_of_a_kind_is_logged_and_its_repeats_are_not(
    caplog_identity: pytest.LogCaptureFixture,
) -> None:
    warn = WarnOnce()

    warn("callback:KeyError", "the callback raised %s", "KeyError")
    warn("callback:KeyError", "the callback raised %s", "KeyError")
    warn("callback:KeyError", "a different message, the same kind")

    assert warnings(caplog_identity) == ["the callback raised KeyError"]


def test_each_kind_is_logged_once_on_its_own(caplog_identity: pytest.LogCaptureFixture) -> None:
    warn = WarnOnce()

    for kind in ["a", "b", "a", "c", "b"]:
        warn(kind, "kind %s", kind)

    assert warnings(caplog_identity) == ["kind a", "kind b", "kind c"]


def test_each_warn_once_remembers_its_own_kinds(caplog_identity: pytest.LogCaptureFixture) -> None:
    first, second = WarnOnce(), WarnOnce()

    first("kind", "from the first")
    second("kind", "from the second")

    assert warnings(caplog_identity) == ["from the first", "from the second"]


def test_the_arguments_are_formatted_by_logging_not_before(
    caplog_identity: pytest.LogCaptureFixture,
) -> None:
    WarnOnce()("kind", "100%% of %s", "calls")

    [record] = caplog_identity.records
    assert (record.msg, record.args) == ("100%% of %s", ("calls",))
    assert record.getMessage() == "100% of calls"


def test_the_exception_given_is_attached_with_its_traceback(
    caplog_identity: pytest.LogCaptureFixture,
) -> None:
    try:
        raise LookupError("session expired")
    except LookupError as caught:
        error = caught

    WarnOnce()("callback:LookupError", "the callback raised", exc=error)

    [record] = caplog_identity.records
    assert record.exc_info is not None
    assert record.exc_info[1] is error
    assert "session expired" in caplog_identity.text


def test_without_an_exception_no_traceback_is_attached(
    caplog_identity: pytest.LogCaptureFixture,
) -> None:
    WarnOnce()("kind", "plain")

    [record] = caplog_identity.records
    assert record.exc_info is None


def test_a_warning_is_a_warning_record_of_the_librarys_logger(
    caplog_identity: pytest.LogCaptureFixture,
) -> None:
    WarnOnce()("kind", "plain")

    [record] = caplog_identity.records
    assert (record.name, record.levelno) == ("posthog_identity", logging.WARNING)
    assert logger.name == "posthog_identity"
