"""Consent: what one request's signals say about tracking this visitor.

Pure code, like `identity.py`: the exchange gathers the signals (an explicit
grant or revoke, the app's ``consent`` callable, the consent cookie, the
``Sec-GPC`` and ``DNT`` headers) and `decide` ranks them. docs/consent.md
describes the modes and what each state does.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

if TYPE_CHECKING:
    from .logs import WarnOnce
    from .settings import Settings

__all__ = [
    "FAILED",
    "CallbackResult",
    "Consent",
    "ConsentHook",
    "ConsentState",
    "RequestConsent",
    "Signals",
    "asker",
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


_BY_MODE = Consent(ConsentState.GRANTED, "mode")


def decide(settings: Settings, signals: Signals) -> Consent:
    """Rank the signals: explicit > callable > cookie > GPC/DNT > the mode's default.

    In ``not-required`` mode nothing but the mode applies. A callable that
    failed decides "unknown" (fail closed); a cookie value that is neither
    granted nor denied counts as no decision.
    """
    if settings.consent == "not-required":
        return _BY_MODE
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


ConsentHook = Callable[[Any], "bool | None"]
"""``callable(native request) -> True / False / None``: the app's own consent record."""


def asker(hook: ConsentHook, native: object, warn: WarnOnce) -> Callable[[], CallbackResult]:
    """The app's consent callable bound to one request, under the failure policy.

    One that raises, or returns anything but True, False or None, means
    "unknown" (no tracking, nothing deleted), logged once per kind.
    """

    def ask() -> CallbackResult:
        try:
            value: object = hook(native)
        except Exception as error:
            warn(
                f"consent:{type(error).__name__}",
                "the consent callable raised %s; no consent for this request",
                type(error).__name__,
                exc=error,
            )
            return FAILED
        if value is None or isinstance(value, bool):
            return value
        if inspect.isawaitable(value):
            close = getattr(value, "close", None)
            if close is not None:
                close()  # never awaited: closed so it does not warn at collection
        warn(
            f"consent-value:{type(value).__name__}",
            "the consent callable must return True, False or None (a plain function, "
            "not async), got %s; no consent for this request",
            type(value).__name__,
        )
        return FAILED

    return ask


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


class RequestConsent:
    """One request's consent: the signals gathered once, the decision kept until one changes.

    :param ask: the app's consent callable, bound to the request; asked at most
        once until `ask_again` (its source, a framework's request, may not be
        ready at first); one that raises counts as "unknown" (fail closed).
    """

    __slots__ = ("_answer", "_ask", "_asked", "_decision", "_explicit", "_signals", "settings")

    def __init__(
        self,
        settings: Settings,
        cookies: Callable[[], Mapping[str, str]],
        gpc: str,
        dnt: str,
        ask: Callable[[], CallbackResult] | None,
    ) -> None:
        self.settings = settings
        self._signals = (cookies, gpc, dnt)
        self._ask = ask
        self._asked = False
        self._answer: CallbackResult = None
        self._explicit: bool | None = None
        self._decision: Consent | None = None

    @property
    def explicit(self) -> bool | None:
        """grant_consent() (True) / revoke_consent() (False) in this request, else None."""
        return self._explicit

    @property
    def decision(self) -> Consent:
        if self._decision is None:
            self._decision = self._decide()
        return self._decision

    def _decide(self) -> Consent:
        if self.settings.consent == "not-required":
            return _BY_MODE
        if self._explicit is None and not self._asked and self._ask is not None:
            self._asked = True
            self._answer = self._ask()
        cookies, gpc, dnt = self._signals
        signals = Signals(
            explicit=self._explicit,
            callback=self._answer,
            cookie=cookies().get(self.settings.consent_cookie),
            gpc=header_is_set(gpc),
            dnt=header_is_set(dnt),
        )
        return decide(self.settings, signals)

    def ask_again(self) -> bool:
        """Forget the callable's answer; True when the decision may change."""
        if not self._asked:
            return False
        self._asked = False
        self._answer = None
        self._decision = None
        return True

    def record(self, granted: bool) -> bool:
        """grant_consent() / revoke_consent(); False when the mode needs no consent."""
        if self.settings.consent == "not-required":
            return False
        self._explicit = granted
        self._decision = None
        return True
