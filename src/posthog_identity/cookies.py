"""The cookies the middleware reads and writes, with their attributes built once.

werkzeug's `dump_cookie` validates and formats every attribute; it costs
microseconds per call, so it runs at start-up for each cookie kind (identity,
its deletion, the consent record) and each Secure variant, and a response
only fills in the value and the expiry date of a prebuilt line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from werkzeug.http import dump_cookie, http_date, parse_cookie

from .settings import Settings
from .signing import CookieCodec, Verified

__all__ = ["CookieWriter", "all_cookies", "find_identity"]

logger = logging.getLogger("posthog_identity")

# Placeholders `dump_cookie` passes through as they are (letters only: never quoted).
_VALUE = "PHIDVALUEPLACEHOLDER"
_EXPIRES = "PHIDEXPIRESPLACEHOLDER"
# The date a deleted cookie expired on: any past date will do.
_EPOCH = http_date(0)


class _Template:
    """One Set-Cookie line with holes for the value and the expiry date."""

    __slots__ = ("_head", "_middle", "_tail")

    def __init__(self, line: str) -> None:
        self._head, rest = line.split(_VALUE, 1)
        self._middle, self._tail = rest.split(_EXPIRES, 1)

    def fill(self, value: str, expires: str) -> str:
        return f"{self._head}{value}{self._middle}{expires}{self._tail}"


class CookieWriter:
    """Builds the three kinds of Set-Cookie value the middleware sends.

    Each is `dump_cookie`'s output for the same arguments, the value of the
    identity cookie being the codec's (base64url and dots: never quoted).
    """

    def __init__(self, settings: Settings) -> None:
        self.max_age = settings.cookie_max_age
        self._expiry_second = -1
        self._expiry = ""

        def line(name: str, value: str, *, secure: bool, httponly: bool, delete: bool) -> str:
            return dump_cookie(
                name,
                value,
                max_age=0 if delete else self.max_age,
                expires=_EPOCH if delete else _EXPIRES,
                path="/",
                domain=settings.cookie_domain,
                secure=secure,
                httponly=httponly,
                samesite=settings.cookie_samesite,
            )

        name = settings.cookie_name
        self._identity = {
            secure: _Template(line(name, _VALUE, secure=secure, httponly=True, delete=False))
            for secure in (False, True)
        }
        self._delete = {
            secure: line(name, "", secure=secure, httponly=True, delete=True)
            for secure in (False, True)
        }
        # Readable by the page's scripts, as a consent banner would write it.
        self._consent = {
            (secure, granted): line(
                settings.consent_cookie,
                (settings.consent_granted if granted else settings.consent_denied)[0],
                secure=secure,
                httponly=False,
                delete=False,
            )
            for secure in (False, True)
            for granted in (False, True)
        }

    def _expires(self) -> str:
        # The date changes once a second; formatting it is most of the cost.
        now = int(time.time())
        if now != self._expiry_second:
            self._expiry = http_date(now + self.max_age)
            self._expiry_second = now
        return self._expiry

    def identity(self, value: str, *, secure: bool) -> str:
        return self._identity[secure].fill(value, self._expires())

    def delete_identity(self, *, secure: bool) -> str:
        return self._delete[secure]

    def consent(self, granted: bool, *, secure: bool) -> str:
        line = self._consent[secure, granted]
        return line.replace(_EXPIRES, self._expires(), 1)


def find_identity(header: str, name: str, codec: CookieCodec) -> Verified | None:
    """The first cookie `name` in a Cookie header that verifies (there may be duplicates).

    A scan rather than a parse of the whole header: the identity cookie is
    usually one of many, and this runs on every request.
    """
    prefix = name + "="
    start = header.find(prefix)
    if start == -1:
        return None
    while start != -1:
        # A whole cookie name only: at the start or after a separator.
        if start == 0 or header[start - 1] in "; \t":
            begin = start + len(prefix)
            end = header.find(";", begin)
            value = (header[begin:] if end == -1 else header[begin:end]).strip()
            # A client may quote the value; ours never needs escapes (base64url
            # and dots), so dropping the quotes is the whole unquoting.
            if len(value) > 1 and value[0] == value[-1] == '"':
                value = value[1:-1]
            verified = codec.loads(value)
            if verified is not None:
                return verified
        start = header.find(prefix, start + 1)
    logger.debug("posthog_identity: no valid identity cookie; a new anonymous id is minted")
    return None


def all_cookies(header: str) -> Mapping[str, str]:
    """Every cookie of a header; one that is not UTF-8 (werkzeug refuses it) reads as none."""
    try:
        return parse_cookie(header)
    except ValueError:  # UnicodeDecodeError
        logger.debug("posthog_identity: a Cookie header that is not UTF-8 is ignored")
        return {}
