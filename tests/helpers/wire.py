"""What our middleware puts on the wire, read back: the identity cookie, PostHog events.

Names as PostHog and the browser see them (`COOKIE`, `ALIAS`, `PERSONLESS`),
the signed cookie decoded with the test secret, and Set-Cookie headers parsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from posthog_identity.signing import CookieCodec, CookieState
from tests.helpers.project import SECRET


def read_cookie(value: str) -> CookieState:
    verified = CookieCodec((SECRET,)).loads(value)
    assert verified is not None, "the identity cookie does not verify"
    return verified.state


#: The identity cookie's name (the default, which the tests keep).
COOKIE = "ph_identity"
#: The login link's event.
ALIAS = "$create_alias"
#: The property that makes an anonymous capture personless.
PERSONLESS = "$process_person_profile"


@dataclass(frozen=True)
class SetCookie:
    name: str
    value: str
    attributes: dict[str, str | None]  # lower-cased names; flags map to None


def parse_set_cookie(header: str) -> SetCookie:
    first, *rest = (part.strip() for part in header.split(";"))
    name, _, value = first.partition("=")
    attributes: dict[str, str | None] = {}
    for part in rest:
        key, sep, val = part.partition("=")
        attributes[key.strip().lower()] = val.strip() if sep else None
    return SetCookie(name.strip(), value.strip(), attributes)


def identity_set_cookies(reply: httpx.Response) -> list[SetCookie]:
    parsed = [parse_set_cookie(h) for h in reply.headers.get_list("set-cookie")]
    return [c for c in parsed if c.name == COOKIE]


def distinct_id(event: dict[str, Any]) -> Any:
    return event.get("distinct_id", event.get("properties", {}).get("distinct_id"))
