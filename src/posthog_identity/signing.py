"""The identity cookie: a compact binary payload, signed with itsdangerous.

Payload (before base64): version, 16-byte anonymous UUID, flags, issue time as
uint32 seconds; when a user was seen, an 8-byte keyed hash of the user id; after
a logout that awaits the browser's next id, two more 8-byte keyed hashes.
No user id or e-mail is stored, and the size never depends on the id.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import struct
import uuid
from dataclasses import dataclass
from typing import NamedTuple

from itsdangerous import BadSignature, Signer

__all__ = [
    "AWAITING_SIZE",
    "MAX_COOKIE_SIZE",
    "CookieCodec",
    "CookieState",
    "Verified",
    "uuid_text",
]

MAX_COOKIE_SIZE = 4096
_VERSION = 1
_HEADER = struct.Struct(">B16sBI")  # version, anonymous id, flags, issued_at
_HASH_SIZE = 8
#: The `awaiting` hashes: the user's and the linked anonymous id's.
AWAITING_SIZE = 2 * _HASH_SIZE
_LINKED = 0x01
_HAS_USER = 0x02
_AWAITING = 0x04
_SALT = b"posthog-identity.cookie"
_DIGEST = hashlib.sha256
_MEMO_SIZE = 4096
_USER_HASH_SALT = b"posthog-identity.user-hash"


class CookieState(NamedTuple):
    """What the identity cookie remembers between requests.

    A named tuple rather than a frozen dataclass: a first visit and every
    transition build one, and a tuple is built in a third of the time.
    """

    anonymous_id: str
    user_hash: bytes | None = None
    linked: bool = False
    issued_at: int = 0
    #: Set by a logout whose anonymous id was minted here, not offered by the
    #: browser: the browser's next own id replaces it. Holds the keyed hashes
    #: (8 bytes each) of the two ids the browser had while signed in, the user's
    #: and the anonymous id linked into them, which are never taken for it.
    awaiting: bytes | None = None


@dataclass(frozen=True, eq=False)
class Verified:
    """A cookie that passed verification, and which secret verified it (0 = newest).

    Compared and hashed by identity: the codec hands out one object per cookie
    value, so caches keyed by it cost no hashing of the state.
    """

    state: CookieState
    key_index: int

    @property
    def stale_key(self) -> bool:
        return self.key_index != 0


class CookieCodec:
    """Turns `CookieState` into a signed cookie value and back, with key rotation.

    :param secrets: newest first; the first signs, all verify.
    """

    def __init__(self, secrets: tuple[str, ...]) -> None:
        if not secrets:
            raise ValueError("at least one secret is required")
        # itsdangerous derives each secret's key (an HMAC of the salt) on every
        # sign and unsign; derived here once, the signers take it as it is: the
        # same key, so the same signatures.
        keys = tuple(_derived_key(secret) for secret in secrets)
        self._signers = tuple(
            Signer(key, salt=_SALT, key_derivation="none", digest_method=_DIGEST) for key in keys
        )
        # Every first visit signs: the newest key's HMAC is keyed once and copied
        # per cookie (keying OpenSSL's HMAC is most of the cost). What it makes is
        # itsdangerous's signed value, the payload, ".", the unpadded base64url
        # of the HMAC-SHA256: the signers above verify it.
        self._mac = hmac.new(keys[0], digestmod=_DIGEST)
        # Verified values, keyed by the whole signed string: a hit is exactly as
        # trustworthy as verifying again, and a returning visitor costs no HMAC.
        # Only verified values are kept; bounded, cleared when full.
        self._verified: dict[str, Verified] = {}
        self._user_keys = tuple(
            hmac.new(secret.encode(), _USER_HASH_SALT, hashlib.sha256).digest()
            for secret in secrets
        )

    def user_hash(self, user_id: str, key_index: int = 0) -> bytes:
        """Short keyed hash of a user id: detects a change without storing the id."""
        # A signed-in user's every request checks it: recent ones are kept.
        return _user_hash(self._user_keys[key_index], user_id)

    def dumps(self, state: CookieState) -> str:
        """Serialize and sign with the newest secret."""
        flags = (
            (_LINKED if state.linked else 0)
            | (_HAS_USER if state.user_hash else 0)
            | (_AWAITING if state.awaiting else 0)
        )
        raw = _HEADER.pack(_VERSION, _uuid_bytes(state.anonymous_id), flags, state.issued_at)
        if state.user_hash:
            raw += state.user_hash
        if state.awaiting:
            raw += state.awaiting
        payload = base64.urlsafe_b64encode(raw).rstrip(b"=")
        mac = self._mac.copy()
        mac.update(payload)
        signature = base64.urlsafe_b64encode(mac.digest()).rstrip(b"=")
        return (payload + b"." + signature).decode("ascii")

    def loads(self, value: str | None) -> Verified | None:
        """Verify and parse; anything tampered, truncated or malformed is `None`."""
        if not value or len(value) > MAX_COOKIE_SIZE:
            return None
        verified = self._verified.get(value)
        if verified is None:
            verified = self._verify(value)
            if verified is not None:
                if len(self._verified) >= _MEMO_SIZE:
                    self._verified.clear()
                self._verified[value] = verified
        return verified

    def _verify(self, value: str) -> Verified | None:
        try:
            signed = value.encode("ascii")
        except UnicodeEncodeError:
            return None
        for index, signer in enumerate(self._signers):
            try:
                payload = signer.unsign(signed)
            except BadSignature:
                continue
            state = _parse(payload)
            return None if state is None else Verified(state, index)
        return None


def _derived_key(secret: str) -> bytes:
    """The key itsdangerous's default derivation ("hmac") makes of a secret and our salt."""
    return Signer(secret, salt=_SALT, key_derivation="hmac", digest_method=_DIGEST).derive_key()


def uuid_text(raw: bytes | bytearray) -> str:
    """A UUID's 16 bytes in its usual text, as `str(uuid.UUID(bytes=raw))` prints them."""
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _uuid_bytes(text: str) -> bytes:
    """The 16 bytes of a UUID in its usual text (what `uuid.UUID` parses, faster)."""
    if len(text) == 36 and text[8] == text[13] == text[18] == text[23] == "-":
        try:
            raw = bytes.fromhex(text.replace("-", ""))
        except ValueError:
            raw = b""
        if len(raw) == 16:
            return raw
    return uuid.UUID(text).bytes


@functools.lru_cache(maxsize=4096)
def _user_hash(key: bytes, user_id: str) -> bytes:
    digest = hmac.digest(key, user_id.encode("utf-8", "surrogatepass"), "sha256")
    return digest[:_HASH_SIZE]


def _parse(payload: bytes) -> CookieState | None:
    try:
        raw = base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4))
    except ValueError:
        return None
    if len(raw) < _HEADER.size:
        return None
    version, anon, flags, issued_at = _HEADER.unpack_from(raw)
    rest = raw[_HEADER.size :]
    user_size = _HASH_SIZE if flags & _HAS_USER else 0
    awaiting_size = AWAITING_SIZE if flags & _AWAITING else 0
    if (
        version != _VERSION
        or flags & ~(_LINKED | _HAS_USER | _AWAITING)
        or len(rest) != user_size + awaiting_size
    ):
        return None
    return CookieState(
        anonymous_id=uuid_text(anon),
        user_hash=rest[:user_size] if user_size else None,
        linked=bool(flags & _LINKED),
        issued_at=issued_at,
        awaiting=rest[user_size:] if awaiting_size else None,
    )
