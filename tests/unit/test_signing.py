"""The signed identity cookie: compact, rotation-aware, never raising on bad input."""

from __future__ import annotations

import base64
import hashlib
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from itsdangerous import Signer

from posthog_identity.signing import MAX_COOKIE_SIZE, CookieCodec, CookieState, uuid_text

ANON = "6f1c2a4e-8d3b-4b5a-9c7e-2f0a1b3c4d5e"
CODEC = CookieCodec(("newest-secret",))


def state(**changes: object) -> CookieState:
    values: dict[str, object] = {"anonymous_id": ANON, "issued_at": 1_700_000_000}
    values.update(changes)
    return CookieState(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "original",
    [
        state(),
        state(linked=True),
        state(user_hash=CODEC.user_hash("user-1")),
        state(user_hash=CODEC.user_hash("user-1"), linked=True, issued_at=0),
        state(issued_at=2**32 - 1),
        state(awaiting=CODEC.user_hash("user-1") + CODEC.user_hash(ANON)),
    ],
    ids=["anonymous", "linked", "with-user", "linked-user-epoch", "max-time", "awaiting"],
)
def test_round_trip(original: CookieState) -> None:
    verified = CODEC.loads(CODEC.dumps(original))
    assert verified is not None
    assert verified.state == original
    assert verified.key_index == 0
    assert not verified.stale_key


def test_value_is_compact_and_cookie_safe() -> None:
    value = CODEC.dumps(state(user_hash=CODEC.user_hash("x" * 10_000)))
    assert len(value) < 100
    assert all(c.isalnum() or c in "-_." for c in value)


def test_size_does_not_grow_with_the_user_id() -> None:
    short = CODEC.dumps(state(user_hash=CODEC.user_hash("1")))
    long = CODEC.dumps(state(user_hash=CODEC.user_hash("someone@example.com" * 500)))
    assert len(short) == len(long)


def test_no_user_id_in_the_cookie() -> None:
    value = CODEC.dumps(state(user_hash=CODEC.user_hash("alice@example.com")))
    payload = value.rsplit(".", 1)[0]
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    assert b"alice" not in raw
    assert b"alice" not in value.encode()


def test_user_hash_is_keyed_by_the_secret() -> None:
    other = CookieCodec(("another-secret",))
    assert CODEC.user_hash("u") != other.user_hash("u")
    assert CODEC.user_hash("u") == CookieCodec(("newest-secret",)).user_hash("u")
    assert CODEC.user_hash("u") != CODEC.user_hash("v")


def test_newest_secret_signs_and_older_ones_verify() -> None:
    old = CookieCodec(("old-secret",))
    rotated = CookieCodec(("new-secret", "old-secret"))
    from_old = rotated.loads(old.dumps(state()))
    assert from_old is not None
    assert from_old.key_index == 1
    assert from_old.stale_key
    from_new = rotated.loads(rotated.dumps(state()))
    assert from_new is not None
    assert from_new.key_index == 0
    assert CookieCodec(("new-secret",)).loads(rotated.dumps(state())) is not None
    assert old.loads(rotated.dumps(state())) is None


def test_user_hash_for_an_older_secret_matches_that_secrets_codec() -> None:
    rotated = CookieCodec(("new-secret", "old-secret"))
    assert rotated.user_hash("u", 1) == CookieCodec(("old-secret",)).user_hash("u")


def test_wrong_secret_reads_as_no_cookie() -> None:
    assert CookieCodec(("other",)).loads(CODEC.dumps(state())) is None


def flip(value: str, index: int) -> str:
    char = value[index]
    return value[:index] + ("A" if char != "A" else "B") + value[index + 1 :]


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        "a.b",
        ".",
        "ééé.ééé",
        "x" * (MAX_COOKIE_SIZE + 1),
        flip(CODEC.dumps(state()), 3),
        flip(CODEC.dumps(state()), -3),
        CODEC.dumps(state())[:-1],
        CODEC.dumps(state())[5:],
        CODEC.dumps(state()) + "x",
    ],
    ids=[
        "none",
        "empty",
        "garbage",
        "dot-pair",
        "dot",
        "non-ascii",
        "oversized",
        "payload-flipped",
        "signature-flipped",
        "truncated",
        "head-cut",
        "extended",
    ],
)
def test_bad_values_read_as_no_cookie(value: str | None) -> None:
    assert CODEC.loads(value) is None


def test_validly_signed_but_malformed_payloads_read_as_no_cookie() -> None:
    signer = CODEC._signers[0]
    good = CODEC.dumps(state()).rsplit(".", 1)[0]
    raw = base64.urlsafe_b64decode(good + "=" * (-len(good) % 4))
    candidates = [
        b"!!!not base64!!!",
        base64.urlsafe_b64encode(raw[:5]),  # too short
        base64.urlsafe_b64encode(b"\x02" + raw[1:]),  # unknown version
        base64.urlsafe_b64encode(raw[:17] + b"\x80" + raw[18:]),  # unknown flag
        base64.urlsafe_b64encode(raw[:17] + b"\x02" + raw[18:]),  # user flag, no hash
        base64.urlsafe_b64encode(raw[:17] + b"\x04" + raw[18:] + b"x" * 8),  # awaiting, half
        base64.urlsafe_b64encode(
            raw[:17] + b"\x06" + raw[18:] + b"x" * 16
        ),  # user + awaiting, short
        base64.urlsafe_b64encode(raw + b"extra"),  # trailing bytes
    ]
    for payload in candidates:
        assert CODEC.loads(signer.sign(payload).decode()) is None, payload


@given(st.text(max_size=5000))
def test_arbitrary_text_never_raises(value: str) -> None:
    assert CODEC.loads(value) is None


states = st.builds(
    CookieState,
    st.uuids(version=4).map(str) | st.uuids().map(str),
    st.none() | st.binary(min_size=8, max_size=8),
    st.booleans(),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.none() | st.binary(min_size=16, max_size=16),
)


@given(states)
def test_any_state_round_trips(original: CookieState) -> None:
    verified = CODEC.loads(CODEC.dumps(original))
    assert verified is not None
    assert verified.state == original


@given(st.binary(min_size=16, max_size=16))
def test_uuid_text_prints_16_bytes_as_uuid_does(raw: bytes) -> None:
    assert uuid_text(raw) == str(uuid.UUID(bytes=raw))


def test_an_upper_case_or_braced_anonymous_id_is_stored_as_its_uuid() -> None:
    braced = CODEC.loads(CODEC.dumps(state(anonymous_id="{" + ANON.upper() + "}")))
    assert braced is not None
    assert braced.state == state()


# Cookies already in browsers were signed by itsdangerous with its default key
# derivation for our salt: every secret, in every position of the list, must
# still sign and verify exactly as that did.
def reference_signer(secret: str) -> Signer:
    return Signer(
        secret,
        salt=b"posthog-identity.cookie",
        key_derivation="hmac",
        digest_method=hashlib.sha256,
    )


secret_lists = st.lists(st.text(min_size=1, max_size=64), min_size=1, max_size=4)


@given(secret_lists, states)
def test_the_newest_secret_signs_as_itsdangerous_default_derivation_does(
    secrets: list[str], original: CookieState
) -> None:
    value = CookieCodec(tuple(secrets)).dumps(original)
    payload = value.rsplit(".", 1)[0].encode()
    assert value == reference_signer(secrets[0]).sign(payload).decode()


@given(secret_lists, states, st.data())
def test_a_cookie_signed_with_any_listed_secret_the_default_way_verifies(
    secrets: list[str], original: CookieState, data: st.DataObject
) -> None:
    codec = CookieCodec(tuple(secrets))
    index = data.draw(st.integers(min_value=0, max_value=len(secrets) - 1))
    payload = codec.dumps(original).rsplit(".", 1)[0].encode()
    verified = codec.loads(reference_signer(secrets[index]).sign(payload).decode())
    assert verified is not None
    assert verified.state == original
    assert verified.key_index == secrets.index(secrets[index])  # the first equal secret


@pytest.mark.parametrize(
    ("secrets", "original", "value"),
    [
        (
            ("newest-secret", "older-secret"),
            state(user_hash=b"12345678", linked=True),
            "AW8cKk6NO0tanH4vChs8TV4DZVPxADEyMzQ1Njc4.uGVH_SvWgM5R9qwrHNC6Hw-3ovzQqb1pw4PREwT5mew",
        ),
        (
            ("older-secret",),
            state(awaiting=b"a" * 16),
            "AW8cKk6NO0tanH4vChs8TV4EZVPxAGFhYWFhYWFhYWFhYWFhYWE.oHFDklz1GQtotk6oAM8Tp48n9x92TQvOxc41fd2yOtE",
        ),
    ],
    ids=["signed-in", "awaiting"],
)
def test_cookies_minted_by_earlier_releases_are_what_we_mint_and_read(
    secrets: tuple[str, ...], original: CookieState, value: str
) -> None:
    assert CookieCodec(secrets).dumps(original) == value
    verified = CookieCodec(("newest-secret", "older-secret")).loads(value)
    assert verified is not None
    assert verified.state == original


def test_a_codec_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="secret"):
        CookieCodec(())
