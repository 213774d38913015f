"""Consent: the decision from the mode, the visitor's signals and the app's switches;
the names of what posthog-js keeps in storage."""

from __future__ import annotations

from typing import Any

import pytest

from posthog_identity.consent import FAILED, ConsentState, Signals, decide, storage_prefixes
from tests.helpers.consent import DENIED, GRANTED, PENDING, UNKNOWN, settings_for

# -- the decision, as a table ----------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "signals", "state", "source"),
    [
        ("not-required", Signals(), GRANTED, "mode"),
        ("not-required", Signals(explicit=False), GRANTED, "mode"),
        ("not-required", Signals(callback=False, cookie="denied"), GRANTED, "mode"),
        ("not-required", Signals(callback=FAILED), GRANTED, "mode"),
        ("not-required", Signals(gpc=True, dnt=True), GRANTED, "mode"),
        ("opt-in", Signals(), PENDING, "mode"),
        ("opt-out", Signals(), GRANTED, "mode"),
        ("opt-in", Signals(cookie="granted"), GRANTED, "cookie"),
        ("opt-in", Signals(cookie=" YES "), GRANTED, "cookie"),
        ("opt-out", Signals(cookie="denied"), DENIED, "cookie"),
        ("opt-out", Signals(cookie="0"), DENIED, "cookie"),
        ("opt-in", Signals(cookie="maybe"), PENDING, "mode"),
        ("opt-out", Signals(cookie=""), GRANTED, "mode"),
        ("opt-in", Signals(callback=True), GRANTED, "callback"),
        ("opt-out", Signals(callback=False, cookie="granted"), DENIED, "callback"),
        ("opt-in", Signals(callback=True, cookie="denied"), GRANTED, "callback"),
        ("opt-in", Signals(callback=None, cookie="granted"), GRANTED, "cookie"),
        ("opt-in", Signals(callback=FAILED, cookie="granted"), UNKNOWN, "callback"),
        ("opt-out", Signals(callback=FAILED), UNKNOWN, "callback"),
        ("opt-in", Signals(explicit=True, callback=False, cookie="denied"), GRANTED, "explicit"),
        ("opt-out", Signals(explicit=False, callback=True), DENIED, "explicit"),
        ("opt-in", Signals(explicit=True, callback=FAILED), GRANTED, "explicit"),
        ("opt-out", Signals(gpc=True), DENIED, "gpc"),
        ("opt-in", Signals(gpc=True), DENIED, "gpc"),
        ("opt-out", Signals(gpc=True, cookie="granted"), GRANTED, "cookie"),
        ("opt-out", Signals(gpc=True, callback=True), GRANTED, "callback"),
        ("opt-out", Signals(dnt=True), GRANTED, "mode"),
    ],
    ids=[
        "not-required",
        "not-required-ignores-revoke",
        "not-required-ignores-callback-and-cookie",
        "not-required-never-calls-back",
        "not-required-ignores-gpc-dnt",
        "opt-in-default",
        "opt-out-default",
        "opt-in-cookie-grants",
        "cookie-case-and-spaces",
        "opt-out-cookie-denies",
        "cookie-0-denies",
        "unknown-cookie-value-is-no-decision",
        "empty-cookie-is-no-decision",
        "callback-grants",
        "callback-beats-cookie-deny",
        "callback-beats-cookie-grant",
        "callback-none-falls-to-cookie",
        "callback-failure-fails-closed",
        "callback-failure-opt-out",
        "explicit-beats-all",
        "explicit-revoke",
        "explicit-beats-failure",
        "gpc-refuses-opt-out",
        "gpc-refuses-opt-in",
        "cookie-beats-gpc",
        "callback-beats-gpc",
        "dnt-off-by-default",
    ],
)
def test_the_decision(mode: str, signals: Signals, state: ConsentState, source: str) -> None:
    consent = decide(settings_for(mode), signals)
    assert (consent.state, consent.source) == (state, source)
    assert consent.granted is (state is GRANTED)


@pytest.mark.parametrize(
    ("changes", "signals", "state"),
    [
        ({"respect_gpc": False}, Signals(gpc=True), GRANTED),
        ({"respect_dnt": True}, Signals(dnt=True), DENIED),
        ({"respect_dnt": True, "respect_gpc": False}, Signals(gpc=True, dnt=True), DENIED),
        ({"consent_granted": ("ok",)}, Signals(cookie="granted"), GRANTED),
        ({"consent_granted": ("ok",)}, Signals(cookie="OK"), GRANTED),
        ({"consent_denied": ("nope",)}, Signals(cookie="denied"), GRANTED),
    ],
    ids=[
        "gpc-off",
        "dnt-on",
        "dnt-on-gpc-off",
        "granted-value-not-listed",
        "custom-granted-value",
        "denied-value-not-listed",
    ],
)
def test_the_decision_follows_the_switches(
    changes: dict[str, Any], signals: Signals, state: ConsentState
) -> None:
    assert decide(settings_for("opt-out", **changes), signals).state is state


# -- what posthog-js keeps, by name ---------------------------------------------------


def test_storage_prefixes_follow_posthog_js_names() -> None:
    assert storage_prefixes("phc_a/b", {}) == (
        "ph_phc_aSLb_",
        "ph_phc_a/b_",
        "ph_conv_phc_a/b",
        "__ph_opt_in_out_phc_a/b",
        "seenSurvey_",
        "inProgressSurvey_",
        "lastSeenSurveyDate",
        "ph_product_tour_",
        "ph_active_product_tour",
        "ph_last_seen_tour_date_",
        "_postHogToolbarParams",
    )
    named = storage_prefixes("phc_a", {"persistence_name": "shop", "consent_persistence_name": "c"})
    assert "ph_shop" in named
    assert "c" in named
    assert "__ph_opt_in_out_phc_a" not in named
