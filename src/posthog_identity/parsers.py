"""The environment variables' text turned into Python values.

Each parser takes the variable's name and its stripped text and returns a
value, or raises `ConfigurationError` naming the variable; `Settings` then
checks what the values mean together.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar

__all__ = [
    "CONSENT_MODES",
    "PARSERS",
    "PERSON_PROFILES",
    "SAMESITE",
    "ConfigurationError",
    "ConsentMode",
    "PersonProfiles",
    "SameSite",
    "parse_bool",
    "parse_list",
    "parse_text",
]

SameSite = Literal["Lax", "Strict", "None"]
PersonProfiles = Literal["identified_only", "always"]
ConsentMode = Literal["not-required", "opt-in", "opt-out"]


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

SAMESITE: dict[str, SameSite] = {"lax": "Lax", "strict": "Strict", "none": "None"}
PERSON_PROFILES: tuple[PersonProfiles, ...] = ("identified_only", "always")
CONSENT_MODES: tuple[ConsentMode, ...] = ("not-required", "opt-in", "opt-out")
_Choice = TypeVar("_Choice", bound=str)


class ConfigurationError(ValueError):
    """Settings with invalid values, each named by its environment variable.

    `variable` and `message` are the first problem's; `errors` lists every
    ``(variable, message)`` pair, and the text has one line per problem, so a
    configuration with several mistakes is fixed in one go.
    """

    def __init__(self, variable: str, message: str, *more: tuple[str, str]) -> None:
        self.variable = variable
        self.message = message
        self.errors: tuple[tuple[str, str], ...] = ((variable, message), *more)
        super().__init__("\n".join(f"{name}: {text}" for name, text in self.errors))

    @classmethod
    def combine(cls, errors: Iterable[ConfigurationError]) -> ConfigurationError:
        """One error listing the problems of all `errors` (at least one), in order."""
        pairs = [pair for error in errors for pair in error.errors]
        (variable, message), *more = pairs
        return cls(variable, message, *more)


def _json_object(variable: str, raw: str) -> Any:
    try:
        value = json.loads(raw)
    except ValueError as error:
        raise ConfigurationError(variable, f"is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ConfigurationError(variable, f"must be a JSON object, got {type(value).__name__}")
    return value


def _flag_keys(variable: str, raw: str) -> bool | tuple[str, ...]:
    if raw.lower() in _TRUE | _FALSE:
        return parse_bool(variable, raw)
    return parse_list(raw)


def _seconds(variable: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(variable, f"expected a number of seconds, got {raw!r}") from None


def parse_text(variable: str, raw: str) -> str:
    return raw


def parse_bool(variable: str, raw: str) -> bool:
    """Strict boolean: 1/0, true/false, yes/no, on/off, any case."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(
        variable, f"expected a boolean (true/false, 1/0, yes/no, on/off), got {raw!r}"
    )


def parse_list(raw: str) -> tuple[str, ...]:
    """Comma-separated items, stripped, empties dropped."""
    return tuple(item for item in (part.strip() for part in raw.split(",")) if item)


def _secrets(variable: str, raw: str) -> tuple[str, ...]:
    secrets = parse_list(raw)
    if not secrets:
        raise ConfigurationError(variable, "is required (a random string of 32+ characters)")
    return secrets


def _whole(unit: str) -> Callable[[str, str], int]:
    """A parser of whole numbers of `unit`, naming the unit in its error."""

    def parse(variable: str, raw: str) -> int:
        try:
            return int(raw, 10)
        except ValueError:
            raise ConfigurationError(
                variable, f"expected a whole number of {unit}, got {raw!r}"
            ) from None

    return parse


def _secure(variable: str, raw: str) -> bool | None:
    if raw.lower() == "auto":
        return None
    try:
        return parse_bool(variable, raw)
    except ConfigurationError:
        raise ConfigurationError(variable, f"expected auto, true or false, got {raw!r}") from None


def _samesite(variable: str, raw: str) -> SameSite:
    try:
        return SAMESITE[raw.lower()]
    except KeyError:
        raise ConfigurationError(variable, f"expected Lax, Strict or None, got {raw!r}") from None


def _one_of(options: tuple[_Choice, ...]) -> Callable[[str, str], _Choice]:
    """A parser for one of `options`, in any letter case."""
    expected = f"{', '.join(options[:-1])} or {options[-1]}"

    def parse(variable: str, raw: str) -> _Choice:
        value = raw.lower()
        for option in options:
            if value == option:
                return option
        raise ConfigurationError(variable, f"expected {expected}, got {raw!r}")

    return parse


def _list(variable: str, raw: str) -> tuple[str, ...]:
    return parse_list(raw)


PARSERS: dict[str, Callable[[str, str], Any]] = {
    "secrets": _secrets,
    "cookie_max_age": _whole("seconds"),
    "cookie_secure": _secure,
    "cookie_samesite": _samesite,
    "inject": parse_bool,
    "reset_on_logout": parse_bool,
    "disabled": parse_bool,
    "exclude_paths": _list,
    "person_profiles": _one_of(PERSON_PROFILES),
    "inject_lookahead": _whole("bytes"),
    "init_options": _json_object,
    "bootstrap_flags": _flag_keys,
    "flags_timeout": _seconds,
    "consent": _one_of(CONSENT_MODES),
    "consent_granted": _list,
    "consent_denied": _list,
    "respect_gpc": parse_bool,
    "respect_dnt": parse_bool,
    "trusted_proxies": _whole("proxies"),
    "proxy_max_body": _whole("bytes"),
    "proxy_timeout": _seconds,
    "proxy_concurrency": _whole("requests"),
    "adopt_browser_id": parse_bool,
    "capture_exceptions": parse_bool,
}
