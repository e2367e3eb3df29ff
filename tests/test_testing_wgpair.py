"""Tests for wiretun.testing.wgpair, the in-memory kit: a pair of Devices on a fake clock and
datagram network that tests (ours and users') build on."""

from __future__ import annotations

import pytest

from wiretun.testing.wgpair import FakeClock, ipv4_packet, ipv6_packet, make_pair, seeded_rng
from wiretun.wireguard.events import HandshakeCompleted


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock()
    start = clock.now
    assert clock.advance(2.5) == start + 2.5 == clock.now


def test_seeded_rng_repeats_itself() -> None:
    assert seeded_rng(7)(16) == seeded_rng(7)(16) != seeded_rng(8)(16)


def test_packets_have_the_lengths_and_addresses_asked_for() -> None:
    v4 = ipv4_packet("10.0.0.1", "10.0.0.2", b"xyz")
    assert len(v4) == 23 and v4[0] == 0x45 and int.from_bytes(v4[2:4]) == 23
    assert v4[12:16] == bytes([10, 0, 0, 1]) and v4[16:20] == bytes([10, 0, 0, 2])
    src, dst = bytes(15) + b"\x01", bytes(15) + b"\x02"
    v6 = ipv6_packet(src, dst, b"ab")
    assert len(v6) == 42 and v6[0] >> 4 == 6 and int.from_bytes(v6[4:6]) == 2
    assert v6[8:24] == src and v6[24:40] == dst


def test_a_pair_handshakes_and_delivers_both_ways() -> None:
    pair = make_pair()
    sent = pair.a_to_b(b"ping")
    pair.net.roundtrip()
    assert pair.delivered_to(pair.b) == [sent]
    reply = pair.b_to_a(b"pong")  # b learnt a's endpoint from the handshake
    pair.net.roundtrip()
    assert pair.delivered_to(pair.a) == [reply]
    assert any(isinstance(e, HandshakeCompleted) for e in pair.events_of(pair.a))
    assert pair.net.sent[0][:2] == (pair.a_addr, pair.b_addr)


def test_the_same_seed_gives_the_same_datagrams() -> None:
    runs = []
    for _ in range(2):
        pair = make_pair(seed=5)
        pair.a_to_b()
        pair.net.roundtrip()
        runs.append([d for _, _, d in pair.net.sent])
    assert runs[0] == runs[1] and runs[0]


def test_filter_loses_datagrams_and_unknown_addresses_lose_them_too() -> None:
    pair = make_pair()
    pair.net.filter = lambda src, dst, data: False
    pair.a_to_b()
    assert pair.net.roundtrip() == 1  # the initiation went out, and nowhere
    assert pair.delivered_to(pair.b) == []
    pair.net.filter = None
    pair.net.move(pair.b_addr, ("192.0.2.99", 1))  # b is gone from where a sends
    pair.clock.advance(6)  # the retry is due
    pair.net.tick(1)
    assert pair.net.sent[-1][1] == pair.b_addr and pair.delivered_to(pair.b) == []


def test_tick_runs_timers_and_roundtrip_bounds_a_ping_pong() -> None:
    pair = make_pair(persistent_keepalive=1)
    pair.a_to_b()
    pair.net.roundtrip()
    before = len(pair.net.sent)
    pair.net.tick(3.5)
    assert len(pair.net.sent) - before >= 3  # a keepalive a second
    assert pair.clock.now >= 1000.0 + 3.5
    fresh = make_pair()
    fresh.a_to_b()
    with pytest.raises(AssertionError, match="still busy after 1 rounds"):
        fresh.net.roundtrip(max_rounds=1)  # a handshake takes more than one round
