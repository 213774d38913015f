"""Consent: what one request's signals say about tracking this visitor.

Pure code, like `identity.py`: the exchange gathers the signals (an explicit
grant or revoke, the app's ``consent`` callable, the consent cookie, the
``Sec-GPC`` and ``DNT`` headers) and `decide` ranks them. docs/consent.md
describes the modes and what each state does.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias

if TYPE_CHECKING:
    from .settings import Settings

__all__ = [
    "FAILED",
    "CallbackResult",
    "Consent",
    "ConsentState",
    "Signals",
    "decide",
    "header_is_set",
    "storage_prefixes",
]


class ConsentState(enum.Enum):
    GRANTED = "granted"  #: track: the normal identity lifecycle
    PENDING = "pending"  #: nobody decided and the mode needs consent (opt-in)
    DENIED = "denied"  #: the visitor refused (revoke, callable, cookie, GPC, DNT)
    UNKNOWN = "unknown"  #: the consent callable failed: no tracking, nothing deleted


class _Failed(enum.Enum):
    FAILED = "failed"


#: What the exchange records when the app's consent callable raised.
FAILED = _Failed.FAILED
CallbackResult: TypeAlias = bool | Literal[_Failed.FAILED] | None
Source: TypeAlias = Literal["mode", "explicit", "callback", "cookie", "gpc", "dnt"]


@dataclass(frozen=True)
class Signals:
    """Everything one request says about consent, strongest first."""

    explicit: bool | None = None  #: grant_consent() / revoke_consent() in this request
    callback: CallbackResult = None  #: the ``consent`` callable's answer
    cookie: str | None = None  #: the consent cookie's value, as sent
    gpc: bool = False  #: ``Sec-GPC: 1``
    dnt: bool = False  #: ``DNT: 1``


@dataclass(frozen=True)
class Consent:
    """The decision for one request, and which signal made it."""

    state: ConsentState
    source: Source

    @property
    def granted(self) -> bool:
        return self.state is ConsentState.GRANTED


def decide(settings: Settings, signals: Signals) -> Consent:
    """Rank the signals: explicit > callable > cookie > GPC/DNT > the mode's default.

    In ``not-required`` mode nothing but the mode applies. A callable that
    failed decides "unknown" (fail closed); a cookie value that is neither
    granted nor denied counts as no decision.
    """
    if settings.consent == "not-required":
        return Consent(ConsentState.GRANTED, "mode")
    if signals.explicit is not None:
        return Consent(_state(signals.explicit), "explicit")
    if signals.callback is FAILED:
        return Consent(ConsentState.UNKNOWN, "callback")
    if signals.callback is not None:
        return Consent(_state(signals.callback), "callback")
    if signals.cookie is not None:
        value = signals.cookie.strip().lower()
        if value in settings.consent_granted:
            return Consent(ConsentState.GRANTED, "cookie")
        if value in settings.consent_denied:
            return Consent(ConsentState.DENIED, "cookie")
    if signals.gpc and settings.respect_gpc:
        return Consent(ConsentState.DENIED, "gpc")
    if signals.dnt and settings.respect_dnt:
        return Consent(ConsentState.DENIED, "dnt")
    if settings.consent == "opt-in":
        return Consent(ConsentState.PENDING, "mode")
    return Consent(ConsentState.GRANTED, "mode")


def _state(granted: bool) -> ConsentState:
    return ConsentState.GRANTED if granted else ConsentState.DENIED


def header_is_set(value: str) -> bool:
    """``Sec-GPC`` and ``DNT`` mean "on" only as exactly ``1``."""
    return value.strip() == "1"


# posthog-js 1.449's storage that holds no token: survey, product tour and
# toolbar state (written only while those features run).
_UNSCOPED_KEYS = (
    "seenSurvey_",
    "inProgressSurvey_",
    "lastSeenSurveyDate",
    "ph_product_tour_",
    "ph_active_product_tour",
    "ph_last_seen_tour_date_",
    "_postHogToolbarParams",
)


def storage_prefixes(token: str, options: Mapping[str, object]) -> tuple[str, ...]:
    """Key prefixes of everything posthog-js 1.449 keeps in cookies and web storage.

    Its persistence is ``ph_<token>_posthog`` with ``+ / =`` of the token spelt
    ``PL SL EQ`` (or ``ph_<persistence_name>``); session keys use the token as
    is (``ph_<token>_window_id``); consent is ``__ph_opt_in_out_<token>``.
    """
    sanitized = token.replace("+", "PL").replace("/", "SL").replace("=", "EQ")
    prefixes = [f"ph_{sanitized}_", f"ph_{token}_", f"ph_conv_{token}"]
    name = options.get("persistence_name")
    if isinstance(name, str) and name:
        prefixes.append(f"ph_{name}")
    consent_name = options.get("consent_persistence_name")
    cookie_prefix = options.get("opt_out_capturing_cookie_prefix")
    if isinstance(consent_name, str) and consent_name:
        prefixes.append(consent_name)
    elif isinstance(cookie_prefix, str) and cookie_prefix:
        prefixes.append(cookie_prefix + token)
    else:
        prefixes.append(f"__ph_opt_in_out_{token}")
    prefixes.extend(_UNSCOPED_KEYS)
    return tuple(dict.fromkeys(prefixes))
