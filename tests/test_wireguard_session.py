"""Keypairs: transport seal/open, counters, limits, padding sizes."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from wiretun.wireguard.events import Endpoint
from wiretun.wireguard.messages import unpack_transport_header
from wiretun.wireguard.replay import REJECT_AFTER_MESSAGES, WINDOW_SIZE, ReplayWindow
from wiretun.wireguard.session import Keypair, padding_size
from wiretun.wireguard.stats import Drops

K1 = bytes(range(32))
K2 = bytes(range(32, 64))


SRC: Endpoint = ("192.0.2.1", 51820)
OWNER = object()  # the peer the allowed-ips lookup answers for every source here


def pair(now: float = 0.0) -> tuple[Keypair, Keypair]:
    a = Keypair(K1, K2, 1, 2, is_initiator=True, created=now)
    b = Keypair(K2, K1, 2, 1, is_initiator=False, created=now)
    return a, b


def open_all(kp: Keypair, msgs: list[bytes]) -> tuple[list[bytes], Drops, int]:
    """`open_run` over `msgs` (all for `kp`): (delivered, drops, messages opened)."""
    out: list[bytes] = []
    drops = Drops()
    end, opened, *_ = kp.open_run(
        [(m, SRC) for m in msgs], 0, owner=OWNER, cached_owner=lambda _: None,
        owner_of=lambda _: OWNER, out=out, drops=drops,
    )  # fmt: skip
    assert end == len(msgs)
    return out, drops, opened


def ip(payload: bytes) -> bytes:
    """A minimal IPv4 packet from 10.0.0.1 (open_run checks the inner header)."""
    total = 20 + len(payload)
    src, dst = ipaddress.IPv4Address("10.0.0.1").packed, ipaddress.IPv4Address("10.0.0.2").packed
    return bytes([0x45, 0]) + total.to_bytes(2, "big") + bytes(8) + src + dst + payload


def test_seal_open_roundtrip_and_wire_format() -> None:
    a, b = pair()
    packets = [ip(b"x" * 12), b"", ip(b"y" * 28)]
    msgs: list[bytes] = []
    assert a.seal_run(packets, msgs, 1420) == (3, 64 + 32 + 80)
    assert [len(m) for m in msgs] == [64, 32, 80]  # 16-byte header + padded packet + tag
    for i, m in enumerate(msgs):
        assert unpack_transport_header(m) == (2, i)  # receiver is the peer's index
    out, drops, opened = open_all(b, [msgs[1], msgs[0]])  # keepalive, then data
    assert out == [packets[0]] and opened == 2 and drops.snapshot() == {}
    # Independent check of the construction: nonce = 4 zero bytes || u64le(counter).
    nonce = bytes(4) + (2).to_bytes(8, "little")
    assert ChaCha20Poly1305(K1).decrypt(nonce, msgs[2][16:], None) == packets[2]
    assert a.send_counter == 3
    assert a.seal(b"z" * 16)[:16] == bytes([4, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(7)


def test_seal_run_pads_to_16_within_the_mtu() -> None:
    a, b = pair()
    msgs: list[bytes] = []
    a.seal_run([ip(b"a"), ip(b"b" * 1399)], msgs, 1420)
    assert [len(m) - 32 for m in msgs] == [32, 1420]  # 21 -> 32; 1419 -> capped at 1420
    out, _, _ = open_all(b, msgs)
    assert out == [ip(b"a"), ip(b"b" * 1399)]  # trimmed to the IP length again


def test_open_rejects_tampering_and_wrong_counter() -> None:
    a, b = pair()
    m = bytearray(a.seal(ip(b"secret")))
    m[8] = 1  # counter is part of the nonce
    assert open_all(b, [bytes(m)])[1].snapshot() == {"decrypt": 1}
    m[8] = 0
    m[-1] ^= 1
    assert open_all(b, [bytes(m)])[1].snapshot() == {"decrypt": 1}
    own = a.seal(ip(b"own"))
    own = own[:4] + (1).to_bytes(4, "little") + own[8:]  # a's send key is not its receive key
    assert open_all(a, [own])[1].snapshot() == {"decrypt": 1}


def test_open_run_stops_at_another_receiver_and_checks_the_inner_packet() -> None:
    a, b = pair()
    msgs: list[bytes] = []
    a.seal_run([ip(b"ok"), b"\x60" + bytes(10), ip(b"from elsewhere")], msgs, 1420)
    other = bytes([4, 0, 0, 0, 9]) + bytes(40)
    out: list[bytes] = []
    drops = Drops()
    sources = iter([OWNER, object()])
    end, opened, rx, first, last, data = b.open_run(
        [(msgs[0], SRC), (msgs[1], ("192.0.2.7", 1)), (msgs[2], SRC), (other, SRC)], 0,
        owner=OWNER, cached_owner=lambda _: None, owner_of=lambda _: next(sources),
        out=out, drops=drops,
    )  # fmt: skip
    assert (end, opened, rx) == (3, 3, sum(map(len, msgs)))
    assert (first, last, data) == (SRC, SRC, True)
    assert out == [ip(b"ok")]
    assert drops.snapshot() == {"bad_packet": 1, "allowed_ips": 1}


def test_limits_and_zeroing() -> None:
    a, b = pair(now=10.0)
    assert a.can_send(189.9) and not a.can_send(190.0)
    assert b.can_receive(189.9) and not b.can_receive(190.0)
    a.send_counter = REJECT_AFTER_MESSAGES - 1
    assert a.seal_run([b"", b"", b""], [], 1420) == (1, 32)  # the last counter, then no more
    assert not a.can_send(11.0)
    with pytest.raises(ValueError, match="no longer send"):
        a.seal(b"")
    b.zero()
    assert not b.can_send(11.0) and not b.can_receive(11.0)
    assert b.seal_run([b""], [], 1420) == (0, 0)
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


# The replay check `open_run` inlines, against ReplayWindow.check_and_mark (the reference):
# counters absolute or relative to the newest (the window's edges, ring wrap-around, the
# message limit), some of them forged (they must never move the window).
_EDGES = (-8192, -WINDOW_SIZE - 1, -WINDOW_SIZE, -WINDOW_SIZE + 1, -64, -1, 0, 1, 2, 64, 8191, 8192)
_STEPS = st.one_of(
    st.tuples(st.just("at"), st.integers(0, 3 * WINDOW_SIZE)),
    st.tuples(
        st.just("at"),
        st.integers(REJECT_AFTER_MESSAGES - 3 * WINDOW_SIZE, REJECT_AFTER_MESSAGES + 3),
    ),
    st.tuples(st.just("by"), st.sampled_from(_EDGES)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_STEPS, st.booleans()), max_size=150))
def test_open_run_replay_check_equals_check_and_mark(
    sequence: list[tuple[tuple[str, int], bool]],
) -> None:
    a, b = pair()
    reference = ReplayWindow()
    for (how, value), forged in sequence:
        counter = value if how == "at" else max(0, reference.last + value)
        if counter >= REJECT_AFTER_MESSAGES:
            # Nothing can seal this counter; the wire can still carry it (any tag).
            msg = bytes([4, 0, 0, 0, 2, 0, 0, 0]) + counter.to_bytes(8, "little") + bytes(16)
        else:
            a.send_counter = counter
            msg = a.seal(b"")
            if forged:
                msg = msg[:-1] + bytes([msg[-1] ^ 1])
        _, drops, opened = open_all(b, [msg])
        authentic = not forged and counter < REJECT_AFTER_MESSAGES
        refused_early = not reference.would_accept(counter)
        accepted = reference.check_and_mark(counter) if authentic else False
        assert opened == int(accepted), (counter, forged)
        if accepted:
            assert drops.snapshot() == {}
        elif authentic or counter >= REJECT_AFTER_MESSAGES:
            assert drops.snapshot() == {"replay": 1}
        else:  # forged: refused before the AEAD exactly when would_accept says no
            assert drops.snapshot() == ({"replay": 1} if refused_early else {"decrypt": 1})
        assert b.replay.last == reference.last
        assert bytes(b.replay.ring) == bytes(reference.ring)
