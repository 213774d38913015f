"""The signed identity cookie: compact, rotation-aware, never raising on bad input."""

from __future__ import annotations

import base64
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from posthog_identity.signing import MAX_COOKIE_SIZE, CookieCodec, CookieState

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


@given(
    st.uuids(version=4) | st.uuids(),
    st.none() | st.binary(min_size=8, max_size=8),
    st.booleans(),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.none() | st.binary(min_size=16, max_size=16),
)
def test_any_state_round_trips(
    anonymous: uuid.UUID,
    user_hash: bytes | None,
    linked: bool,
    issued_at: int,
    awaiting: bytes | None,
) -> None:
    original = CookieState(str(anonymous), user_hash, linked, issued_at, awaiting)
    verified = CODEC.loads(CODEC.dumps(original))
    assert verified is not None
    assert verified.state == original


def test_a_codec_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="secret"):
        CookieCodec(())
