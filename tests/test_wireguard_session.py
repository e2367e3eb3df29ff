"""Keypairs: transport seal/open, counters, limits, padding sizes."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from wiretun.wireguard.messages import unpack_transport_header
from wiretun.wireguard.replay import REJECT_AFTER_MESSAGES
from wiretun.wireguard.session import Keypair, padding_size

K1 = bytes(range(32))
K2 = bytes(range(32, 64))


def pair(now: float = 0.0) -> tuple[Keypair, Keypair]:
    a = Keypair(K1, K2, 1, 2, is_initiator=True, created=now)
    b = Keypair(K2, K1, 2, 1, is_initiator=False, created=now)
    return a, b


def test_seal_open_roundtrip_and_wire_format() -> None:
    a, b = pair()
    msgs = [a.seal(b"x" * 16), a.seal(b""), a.seal(b"y" * 32)]
    assert [len(m) for m in msgs] == [48, 32, 64]
    for i, m in enumerate(msgs):
        assert unpack_transport_header(m) == (2, i)  # receiver is the peer's index
    assert b.open(1, msgs[1]) == b""
    assert b.open(0, msgs[0]) == b"x" * 16
    # Independent check of the construction: nonce = 4 zero bytes || u64le(counter).
    nonce = bytes(4) + (2).to_bytes(8, "little")
    assert ChaCha20Poly1305(K1).decrypt(nonce, msgs[2][16:], None) == b"y" * 32
    assert a.send_counter == 3


def test_open_rejects_tampering_and_wrong_counter() -> None:
    a, b = pair()
    m = bytearray(a.seal(b"secret padded...."[:16]))
    assert b.open(1, bytes(m)) is None  # counter is part of the nonce
    m[-1] ^= 1
    assert b.open(0, bytes(m)) is None
    assert a.open(0, a.seal(b"own")) is None  # a's send key is not its receive key


def test_limits_and_zeroing() -> None:
    a, b = pair(now=10.0)
    assert a.can_send(189.9) and not a.can_send(190.0)
    assert b.can_receive(189.9) and not b.can_receive(190.0)
    a.send_counter = REJECT_AFTER_MESSAGES
    assert not a.can_send(11.0)
    with pytest.raises(ValueError, match="no longer send"):
        a.seal(b"")
    b.zero()
    assert not b.can_send(11.0) and not b.can_receive(11.0)
    assert b.open(0, bytes(32)) is None
    with pytest.raises(ValueError, match="32 bytes"):
        Keypair(b"short", K1, 1, 2, is_initiator=True, created=0.0)


@pytest.mark.parametrize(
    ("length", "mtu", "expected"),
    [
        (0, 1420, 0),
        (1, 1420, 15),
        (16, 1420, 0),
        (17, 1420, 15),
        (1419, 1420, 1),  # never pad beyond the MTU
        (1420, 1420, 0),
        (1405, 1420, 3),
        (100, 0, 12),  # no MTU: plain rounding
        # Larger than the MTU: the last MTU-sized unit is padded (wireguard-go).
        (1430, 1420, 6),
        (1500, 1420, 0),  # last unit 80
        (2839, 1420, 1),  # last unit 1419: capped at the MTU
        (2840, 1420, 0),
    ],
)
def test_padding_size(length: int, mtu: int, expected: int) -> None:
    assert padding_size(length, mtu) == expected
