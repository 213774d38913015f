"""Configuration: one frozen `Settings`, read once from environment variables."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .parsers import (
    CONSENT_MODES,
    PARSERS,
    PERSON_PROFILES,
    SAMESITE,
    ConfigurationError,
    ConsentMode,
    PersonProfiles,
    SameSite,
    parse_text,
)

__all__ = ["ENV_VARS", "ConfigurationError", "ConsentMode", "Settings"]

DEFAULT_HOST = "https://us.i.posthog.com"
#: Shorter secrets are accepted (tests, demos) but warned about at start-up.
MIN_SECRET_LENGTH = 32

#: Settings field -> the environment variable it is read from (the first, for
#: the API key, which has an alias).
ENV_VARS: dict[str, str] = {
    "api_key": "POSTHOG_API_KEY",
    "host": "POSTHOG_HOST",
    "secrets": "POSTHOG_IDENTITY_SECRET",
    "cookie_name": "POSTHOG_IDENTITY_COOKIE_NAME",
    "cookie_domain": "POSTHOG_IDENTITY_COOKIE_DOMAIN",
    "cookie_max_age": "POSTHOG_IDENTITY_COOKIE_MAX_AGE",
    "cookie_secure": "POSTHOG_IDENTITY_COOKIE_SECURE",
    "cookie_samesite": "POSTHOG_IDENTITY_COOKIE_SAMESITE",
    "inject": "POSTHOG_IDENTITY_INJECT",
    "script_url": "POSTHOG_IDENTITY_SCRIPT_URL",
    "reset_on_logout": "POSTHOG_IDENTITY_RESET_ON_LOGOUT",
    "exclude_paths": "POSTHOG_IDENTITY_EXCLUDE_PATHS",
    "person_profiles": "POSTHOG_IDENTITY_PERSON_PROFILES",
    "disabled": "POSTHOG_IDENTITY_DISABLED",
    "inject_lookahead": "POSTHOG_IDENTITY_INJECT_LOOKAHEAD",
    "init_options": "POSTHOG_IDENTITY_INIT_OPTIONS",
    "bootstrap_flags": "POSTHOG_IDENTITY_BOOTSTRAP_FLAGS",
    "personal_api_key": "POSTHOG_PERSONAL_API_KEY",
    "flags_timeout": "POSTHOG_IDENTITY_FLAGS_TIMEOUT",
    "consent": "POSTHOG_IDENTITY_CONSENT",
    "consent_cookie": "POSTHOG_IDENTITY_CONSENT_COOKIE",
    "consent_granted": "POSTHOG_IDENTITY_CONSENT_GRANTED",
    "consent_denied": "POSTHOG_IDENTITY_CONSENT_DENIED",
    "respect_gpc": "POSTHOG_IDENTITY_RESPECT_GPC",
    "respect_dnt": "POSTHOG_IDENTITY_RESPECT_DNT",
    "trusted_proxies": "POSTHOG_IDENTITY_TRUSTED_PROXIES",
    "proxy_path": "POSTHOG_IDENTITY_PROXY_PATH",
    "proxy_max_body": "POSTHOG_IDENTITY_PROXY_MAX_BODY",
    "proxy_timeout": "POSTHOG_IDENTITY_PROXY_TIMEOUT",
    "proxy_concurrency": "POSTHOG_IDENTITY_PROXY_CONCURRENCY",
    "adopt_browser_id": "POSTHOG_IDENTITY_ADOPT_BROWSER_ID",
    "capture_exceptions": "POSTHOG_IDENTITY_CAPTURE_EXCEPTIONS",
}
#: posthog-js init options the snippet sets itself to put the browser on the
#: request's identity; users cannot override them.
RESERVED_INIT_OPTIONS = frozenset(
    {
        "bootstrap",
        "get_device_id",
        "loaded",
        "prepare_external_dependency_script",
        "prepare_external_dependency_stylesheet",
    }
)
API_KEY_ALIAS = "POSTHOG_PROJECT_API_KEY"

# RFC 6265 cookie-name: an RFC 7230 token.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_DOMAIN = re.compile(r"^\.?[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?$")
# RFC 6265 cookie-octet: what a consent value may hold so it can be written unquoted.
_COOKIE_VALUE = re.compile(r"^[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+$")


def _fail(name: str, message: str) -> ConfigurationError:
    return ConfigurationError(ENV_VARS.get(name, name), message)


@dataclass(frozen=True)
class Settings:
    """Everything the middleware needs to know, validated at construction.

    Build it with :meth:`from_env`; constructing it directly takes Python values
    (a tuple of secrets, ints, bools) and applies the same rules.

    :param secrets: cookie signing secrets, newest first; every one verifies.
    :param api_key: PostHog project API key; ``None`` sends nothing and injects
        no snippet, while identity is still resolved.
    :param cookie_secure: ``None`` means "auto": Secure when the request is https.
    """

    secrets: tuple[str, ...] = field(repr=False)
    api_key: str | None = None
    host: str = DEFAULT_HOST
    cookie_name: str = "ph_identity"
    cookie_domain: str | None = None
    cookie_max_age: int = 31_536_000
    cookie_secure: bool | None = None
    cookie_samesite: SameSite = "Lax"
    inject: bool = True
    script_url: str | None = None
    reset_on_logout: bool = True
    exclude_paths: tuple[str, ...] = ()
    person_profiles: PersonProfiles = "identified_only"
    disabled: bool = False
    inject_lookahead: int = 64 * 1024
    init_options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    #: False, True (every flag) or the flag keys to bootstrap into the page.
    bootstrap_flags: bool | tuple[str, ...] = False
    personal_api_key: str | None = field(default=None, repr=False)
    flags_timeout: float = 0.3
    #: not-required (no consent needed), opt-in or opt-out; see docs/consent.md.
    consent: ConsentMode = "not-required"
    consent_cookie: str = "ph_consent"
    #: Consent cookie values (lower case) that grant, and that refuse.
    consent_granted: tuple[str, ...] = ("granted", "true", "yes", "1")
    consent_denied: tuple[str, ...] = ("denied", "false", "no", "0")
    respect_gpc: bool = True
    respect_dnt: bool = False
    #: Proxies in front of the app whose X-Forwarded-For hop is believed (as ProxyFix).
    trusted_proxies: int = 0
    #: The path the middleware answers as a proxy to PostHog (``/ingest``); None: off.
    proxy_path: str | None = None
    #: Above the largest request posthog-js builds (a session-replay flush); see docs/proxy.md.
    proxy_max_body: int = 10 * 1024 * 1024
    proxy_timeout: float = 10.0
    #: Proxied requests in flight per process, beyond which 503; None: the adapter's default.
    proxy_concurrency: int | None = None
    #: Without a cookie of ours, take posthog-js's own anonymous id (a UUIDv7 it
    #: sends as X-POSTHOG-DISTINCT-ID or keeps in its cookie) instead of minting one.
    adopt_browser_id: bool = True
    #: Unhandled errors of a request go to PostHog error tracking (`$exception`).
    capture_exceptions: bool = True

    def __post_init__(self) -> None:
        # One check per variable, all run: the error lists every bad one.
        errors: list[ConfigurationError] = []
        for check in (
            self._check_secrets,
            self._check_api_key,
            self._check_personal_api_key,
            self._check_urls,
            self._check_cookie,
            self._check_samesite,
            self._check_person_profiles,
            self._check_injection,
            self._check_flags,
            self._check_exclude_paths,
            self._check_consent,
            self._check_proxy,
        ):
            try:
                check()
            except ConfigurationError as error:
                errors.append(error)
        if errors:
            raise ConfigurationError.combine(errors)

    def _check_secrets(self) -> None:
        if isinstance(self.secrets, str):
            raise _fail("secrets", "expected a tuple of secrets, got a single string")
        secrets = tuple(self.secrets)
        if not secrets:
            raise _fail("secrets", "is required (a random string of 32+ characters)")
        if not all(isinstance(s, str) and s for s in secrets):
            raise _fail("secrets", "every secret must be a non-empty string")
        object.__setattr__(self, "secrets", secrets)

    def _check_api_key(self) -> None:
        if self.api_key is not None and (not self.api_key or self.api_key.strip() != self.api_key):
            raise _fail("api_key", "must be a non-empty key without surrounding spaces")

    def _check_personal_api_key(self) -> None:
        if self.personal_api_key is not None and not self.personal_api_key.strip():
            raise _fail("personal_api_key", "must not be empty")

    def _check_urls(self) -> None:
        errors = []
        try:
            object.__setattr__(self, "host", _check_url("host", self.host))
        except ConfigurationError as error:
            errors.append(error)
        if self.script_url is not None:
            try:
                url = _check_url("script_url", self.script_url, allow_path=True)
                object.__setattr__(self, "script_url", url)
            except ConfigurationError as error:
                errors.append(error)
        if errors:
            raise ConfigurationError.combine(errors)

    def _check_cookie(self) -> None:
        errors = []
        if not isinstance(self.cookie_name, str) or not _TOKEN.match(self.cookie_name):
            errors.append(_fail("cookie_name", f"{self.cookie_name!r} is not a valid cookie name"))
        if self.cookie_domain is not None and not _DOMAIN.match(self.cookie_domain):
            errors.append(_fail("cookie_domain", f"{self.cookie_domain!r} is not a valid domain"))
        if isinstance(self.cookie_max_age, bool) or not isinstance(self.cookie_max_age, int):
            errors.append(_fail("cookie_max_age", "must be a whole number of seconds"))
        elif self.cookie_max_age <= 0:
            errors.append(_fail("cookie_max_age", f"must be positive, got {self.cookie_max_age}"))
        if self.cookie_secure not in (None, True, False):
            errors.append(_fail("cookie_secure", "must be None (auto), True or False"))
        if errors:
            raise ConfigurationError.combine(errors)

    def _check_samesite(self) -> None:
        if self.cookie_samesite not in SAMESITE.values():
            raise _fail(
                "cookie_samesite",
                f"must be Lax, Strict or None, got {self.cookie_samesite!r}",
            )
        if self.cookie_samesite == "None" and self.cookie_secure is False:
            raise ConfigurationError(
                ENV_VARS["cookie_samesite"],
                f"SameSite=None requires a Secure cookie, but {ENV_VARS['cookie_secure']} is false",
            )

    def _check_person_profiles(self) -> None:
        if self.person_profiles not in PERSON_PROFILES:
            raise _fail(
                "person_profiles",
                f"must be identified_only or always, got {self.person_profiles!r}",
            )

    def _check_injection(self) -> None:
        errors = []
        for name in (
            "inject",
            "reset_on_logout",
            "disabled",
            "adopt_browser_id",
            "capture_exceptions",
        ):
            if not isinstance(getattr(self, name), bool):
                errors.append(_fail(name, "must be true or false"))
        lookahead = self.inject_lookahead
        if isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 1024:
            errors.append(
                _fail(
                    "inject_lookahead",
                    f"must be a whole number of bytes >= 1024, got {lookahead!r}",
                )
            )
        try:
            object.__setattr__(self, "init_options", _check_init_options(self.init_options))
        except ConfigurationError as error:
            errors.append(error)
        if errors:
            raise ConfigurationError.combine(errors)

    def _check_flags(self) -> None:
        errors = []
        flags = self.bootstrap_flags
        if not isinstance(flags, bool):
            keys = tuple(flags)
            if not keys or not all(isinstance(k, str) and k for k in keys):
                errors.append(
                    _fail("bootstrap_flags", "must be true, false or a list of flag keys")
                )
            else:
                object.__setattr__(self, "bootstrap_flags", keys)
        timeout = self.flags_timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= 10
        ):
            errors.append(
                _fail("flags_timeout", f"must be a number of seconds in (0, 10], got {timeout!r}")
            )
        if errors:
            raise ConfigurationError.combine(errors)

    def _check_exclude_paths(self) -> None:
        paths = tuple(_check_prefix(p) for p in self.exclude_paths)
        object.__setattr__(self, "exclude_paths", paths)

    def _check_proxy(self) -> None:
        errors = []
        hops = self.trusted_proxies
        if isinstance(hops, bool) or not isinstance(hops, int) or hops < 0:
            errors.append(_fail("trusted_proxies", f"must be a whole number >= 0, got {hops!r}"))
        path = self.proxy_path
        if path is not None:
            if not isinstance(path, str) or not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+/?", path):
                errors.append(_fail("proxy_path", f"must be a path such as /ingest, got {path!r}"))
            else:
                object.__setattr__(self, "proxy_path", path.rstrip("/"))
        size = self.proxy_max_body
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            errors.append(
                _fail("proxy_max_body", f"must be a whole number of bytes >= 1, got {size!r}")
            )
        timeout = self.proxy_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            errors.append(
                _fail("proxy_timeout", f"must be a positive number of seconds, got {timeout!r}")
            )
        cap = self.proxy_concurrency
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            errors.append(
                _fail("proxy_concurrency", f"must be a whole number of requests >= 1, got {cap!r}")
            )
        if errors:
            raise ConfigurationError.combine(errors)

    def _check_consent(self) -> None:
        errors = []
        if self.consent not in CONSENT_MODES:
            errors.append(
                _fail("consent", f"must be not-required, opt-in or opt-out, got {self.consent!r}")
            )
        if not isinstance(self.consent_cookie, str) or not _TOKEN.match(self.consent_cookie):
            errors.append(
                _fail("consent_cookie", f"{self.consent_cookie!r} is not a valid cookie name")
            )
        elif self.consent_cookie == self.cookie_name:
            errors.append(
                _fail(
                    "consent_cookie",
                    f"must differ from {ENV_VARS['cookie_name']} ({self.cookie_name!r})",
                )
            )
        values: dict[str, tuple[str, ...]] = {}
        for name in ("consent_granted", "consent_denied"):
            try:
                values[name] = _consent_values(name, getattr(self, name))
            except ConfigurationError as error:
                errors.append(error)
        if len(values) == 2:
            granted, denied = values["consent_granted"], values["consent_denied"]
            both = sorted(set(granted) & set(denied))
            if both:
                errors.append(
                    _fail(
                        "consent_denied",
                        f"{', '.join(both)} also grants consent ({ENV_VARS['consent_granted']})",
                    )
                )
        for name, checked in values.items():
            object.__setattr__(self, name, checked)
        for name in ("respect_gpc", "respect_dnt"):
            if not isinstance(getattr(self, name), bool):
                errors.append(_fail(name, "must be true or false"))
        if errors:
            raise ConfigurationError.combine(errors)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.repr
        )
        personal = ", personal_api_key=<masked>" if self.personal_api_key else ""
        return f"Settings(secrets=<{len(self.secrets)} masked>, {shown}{personal})"

    @property
    def secure_cookie(self) -> bool | None:
        """The Secure flag: forced by SameSite=None, else the setting (None: auto)."""
        return True if self.cookie_samesite == "None" else self.cookie_secure

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read the settings from `environ` (default `os.environ`); overrides win.

        Overrides take `Settings` field names, with Python values or with the
        text the environment variable would hold (``cookie_samesite="lax"``,
        ``cookie_max_age="3600"``, ``exclude_paths="/static,/media"``).
        Every invalid value is reported, in one `ConfigurationError`.
        """
        env = os.environ if environ is None else environ
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown Settings field(s): {', '.join(sorted(unknown))}")

        values: dict[str, Any] = {}
        errors: list[ConfigurationError] = []
        texts = {name: env.get(variable, "") for name, variable in ENV_VARS.items()}
        try:
            texts["api_key"] = _api_key(env)
        except ConfigurationError as error:
            errors.append(error)
            texts["api_key"] = ""
        for name, value in overrides.items():
            if isinstance(value, str) and name in PARSERS:
                texts[name] = value
            else:
                texts.pop(name)
                values[name] = value
        for name, text in texts.items():
            raw = text.strip()
            if not raw:
                continue
            try:
                values[name] = PARSERS.get(name, parse_text)(ENV_VARS[name], raw)
            except ConfigurationError as error:
                errors.append(error)
        if "secrets" not in values and not any(e.variable == ENV_VARS["secrets"] for e in errors):
            errors.append(_fail("secrets", "is required (a random string of 32+ characters)"))
        try:
            # A stand-in secret when it is missing, so the other values are
            # still checked and reported together.
            settings = cls(**{"secrets": ("-",), **values})
        except ConfigurationError as error:
            errors.append(error)
        if errors:
            raise ConfigurationError.combine(errors)
        return settings


def _api_key(env: Mapping[str, str]) -> str:
    primary = env.get(ENV_VARS["api_key"], "").strip()
    alias = env.get(API_KEY_ALIAS, "").strip()
    if primary and alias and primary != alias:
        raise ConfigurationError(
            ENV_VARS["api_key"], f"differs from {API_KEY_ALIAS}; set only one of them"
        )
    return primary or alias


def _check_url(name: str, value: str, *, allow_path: bool = False) -> str:
    if allow_path and value.startswith("/") and not value.startswith("//"):
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or " " in value:
        expected = "an http(s) URL or a path starting with /" if allow_path else "an http(s) URL"
        raise _fail(name, f"must be {expected}, got {value!r}")
    return value.rstrip("/") if name == "host" else value


def _consent_values(name: str, values: Iterable[object]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise _fail(name, "expected a tuple of values, got a single string")
    given = tuple(values)
    items = [v for v in given if isinstance(v, str)]
    if not items or len(items) != len(given):
        raise _fail(name, "must list at least one cookie value, each a string")
    lowered = tuple(dict.fromkeys(v.strip().lower() for v in items))
    for value in lowered:
        if not _COOKIE_VALUE.match(value):
            raise _fail(name, f"{value!r} is not a valid cookie value")
    return lowered


def _check_init_options(options: object) -> Mapping[str, Any]:
    if not isinstance(options, Mapping):
        raise _fail("init_options", "must be a JSON object of posthog-js init options")
    reserved = sorted(RESERVED_INIT_OPTIONS.intersection(options))
    if reserved:
        raise _fail("init_options", f"{', '.join(reserved)} cannot be set: the snippet manages it")
    try:
        json.dumps(options)
    except (TypeError, ValueError) as error:
        raise _fail("init_options", f"must be JSON-serializable: {error}") from None
    return dict(options)


def _check_prefix(value: str) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise _fail("exclude_paths", f"each path must start with '/', got {value!r}")
    return value.rstrip("/") or "/"
