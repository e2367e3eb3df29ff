"""The Device state machine, driven through two (or three) in-memory peers with a fake clock."""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wiretun.testing.wgpair import (
    FakeClock,
    Network,
    WgPair,
    ipv4_packet,
    ipv6_packet,
    make_pair,
    seeded_rng,
)
from wiretun.wireguard.cookie import CookieGenerator
from wiretun.wireguard.crypto import generate_private_key, public_key
from wiretun.wireguard.device import Device
from wiretun.wireguard.events import (
    Endpoint,
    HandshakeCompleted,
    HandshakeFailed,
    KeysZeroed,
    PeerEndpointChanged,
)
from wiretun.wireguard.handshake import InitiatorHandshake, StaticIdentity
from wiretun.wireguard.messages import MSG_INITIATION, MSG_TRANSPORT
from wiretun.wireguard.pacing import HANDSHAKE_QUEUE_SIZE, INITIATION_BURST, INITIATION_RATE
from wiretun.wireguard.peer import MAX_STAGED_PACKETS
from wiretun.wireguard.timers import REKEY_TIMEOUT


def kinds(pair: WgPair, start: int = 0) -> list[tuple[str, int, int]]:
    """(sender 'a'/'b', message type, length) of every datagram sent since `start`."""
    names = {pair.a_addr: "a", pair.b_addr: "b"}
    return [(names.get(s, "?"), d[0], len(d)) for s, _, d in pair.net.sent[start:]]


def receive(dev: Device, datagrams: list[tuple[bytes, Endpoint]], now: float) -> list[bytes]:
    """What the shell does with a UDP batch: the data at once, then the queued handshakes."""
    packets = dev.receive_datagrams(datagrams, now)
    dev.process_handshakes(now)
    return packets


def established(seed: int = 1, **kwargs: object) -> WgPair:
    pair = make_pair(seed, **kwargs)  # type: ignore[arg-type]
    pair.a_to_b(b"first")
    pair.net.roundtrip()
    assert pair.delivered_to(pair.b)
    pair.delivered_to(pair.b).clear()
    return pair


def test_handshake_and_data_both_ways() -> None:
    pair = make_pair()
    pkt = pair.a_to_b(b"ping")
    assert pair.a.datagrams_to_send() != []  # the initiation is queued, the packet staged
    pair.a.send_packets([], pair.clock.now)
    pair.a_to_b(b"ping")  # rate limited: no second initiation within 5 s
    pair.net.roundtrip()
    # Re-run: the first drain above discarded the initiation, the retransmit timer resends.
    assert pair.delivered_to(pair.b) == []
    pair.net.tick(6)
    assert pair.delivered_to(pair.b) == [pkt, pkt]
    reply = pair.b_to_a(b"pong")
    pair.net.roundtrip()
    assert pair.delivered_to(pair.a) == [reply]
    assert any(isinstance(e, HandshakeCompleted) and e.is_initiator for e in pair.events_of(pair.a))
    assert any(
        isinstance(e, HandshakeCompleted) and not e.is_initiator for e in pair.events_of(pair.b)
    )
    assert pair.a.stats().drops == {}
    assert pair.b.stats().drops == {}


def test_handshake_message_flow_and_key_confirmation() -> None:
    pair = make_pair()
    pkt = pair.a_to_b(b"data")
    pair.net.roundtrip()
    # initiation, response, then a's staged packet confirms the keys for b.
    assert kinds(pair) == [("a", 1, 148), ("b", 2, 92), ("a", 4, 16 + 32 + 16)]
    assert pair.delivered_to(pair.b) == [pkt]
    peer_a = pair.b.peer(pair.a.public_key)
    assert peer_a.current is not None and peer_a.next is None


def test_responder_waits_for_confirmation_then_keepalive_confirms() -> None:
    pair = make_pair()
    # Turning on persistent keepalive sends a keepalive, which needs a handshake first.
    pair.a.set_persistent_keepalive(pair.b.public_key, 100, pair.clock.now)
    pair.net.step()  # initiation -> b; b's response is queued
    peer_a = pair.b.peer(pair.a.public_key)
    assert peer_a.next is not None and peer_a.current is None
    back = pair.b_to_a(b"early")  # b may not send under unconfirmed keys: staged
    assert list(peer_a.staged) == [back]
    pair.net.roundtrip()  # response -> a; a's keepalive -> b confirms; b flushes
    assert kinds(pair)[:3] == [("a", 1, 148), ("b", 2, 92), ("a", 4, 32)]
    assert peer_a.current is not None and peer_a.next is None
    assert pair.delivered_to(pair.a) == [back]


def test_handshake_initiated_by_b_after_a_is_known() -> None:
    pair = make_pair(b_knows_a_endpoint=True)
    pkt = pair.b_to_a(b"from b")
    pair.net.roundtrip()
    assert pair.delivered_to(pair.a) == [pkt]
    assert kinds(pair)[0] == ("b", 1, 148)


def test_ipv6_and_padding_and_trimming() -> None:
    pair = make_pair()
    a6 = ipaddress.IPv6Address("fd00::1").packed
    b6 = ipaddress.IPv6Address("fd00::2").packed
    pair.a.add_allowed_ips(pair.b.public_key, ["fd00::2/128"])
    pair.b.add_allowed_ips(pair.a.public_key, ["fd00::1/128"])
    pkts = [ipv6_packet(a6, b6, bytes(range(n % 256)) * 1) for n in (0, 1, 15, 16, 17)]
    pkts.append(ipv4_packet("10.0.0.1", "10.0.0.2", b"z" * (1419 - 20)))  # 1419 -> 1420
    pkts.append(ipv4_packet("10.0.0.1", "10.0.0.2", b"z" * (1420 - 20)))  # exactly MTU
    pair.a.send_packets(pkts, pair.clock.now)
    start = len(pair.net.sent)
    pair.net.roundtrip()
    assert pair.delivered_to(pair.b) == pkts
    sizes = [len(d) - 32 for s, _, d in pair.net.sent[start:] if s == pair.a_addr and d[0] == 4]
    expected = [min((len(p) + 15) // 16 * 16, 1420) for p in pkts]
    assert sizes == expected
    assert sizes[-2:] == [1420, 1420]


def test_inner_packet_trimmed_to_ip_length() -> None:
    pair = established()
    pkt = ipv4_packet("10.0.0.1", "10.0.0.2", b"abc")
    # Trailing garbage after the IP packet is sent as-is and cut off at the receiver.
    pair.a.send_packets([pkt + b"\xff" * 7], pair.clock.now)
    pair.net.roundtrip()
    assert pair.delivered_to(pair.b) == [pkt]


def test_rekey_at_120s_without_loss() -> None:
    pair = established()
    sent: list[bytes] = []
    for second in range(150):
        sent.append(pair.a_to_b(second.to_bytes(2, "big")))
        sent.append(pair.b_to_a(second.to_bytes(2, "big")))
        pair.net.roundtrip()
        pair.net.tick(1)
    got = pair.delivered_to(pair.b) + pair.delivered_to(pair.a)
    assert sorted(got) == sorted(sent)
    assert pair.a.stats().handshakes_completed == 2  # the first, and the rekey at 120 s
    assert pair.a.stats().drops == {} and pair.b.stats().drops == {}
    initiations = [i for i, (who, t, _) in enumerate(kinds(pair)) if t == 1]
    assert len(initiations) == 2 and all(kinds(pair)[i][0] == "a" for i in initiations)


def test_reject_after_180s() -> None:
    pair = established()
    old = pair.a_to_b(b"old")
    pair.net.step()
    captured = [d for s, _, d in pair.net.sent if s == pair.a_addr and d[0] == MSG_TRANSPORT]
    pair.net.filter = lambda s, d, m: False  # total loss from now on
    pair.clock.advance(180.0)
    # The old keypair can neither receive nor send any more.
    assert pair.b.receive_datagrams([(captured[-1], pair.a_addr)], pair.clock.now) == []
    assert pair.b.stats().drops["expired"] == 1
    pair.a_to_b(b"new")
    out = pair.a.datagrams_to_send()
    assert [m[0] for _, group in out for m in group] == [MSG_INITIATION]
    assert old in pair.delivered_to(pair.b)


def test_retransmit_on_loss() -> None:
    pair = make_pair()
    dropped: list[int] = []

    def lose_first_initiation(src: object, dst: object, msg: bytes) -> bool:
        if msg[0] == MSG_INITIATION and not dropped:
            dropped.append(1)
            return False
        return True

    pair.net.filter = lose_first_initiation
    pkt = pair.a_to_b(b"x")
    pair.net.roundtrip()
    assert pair.delivered_to(pair.b) == []
    due = pair.a.next_timer()
    assert due is not None and 5.0 <= due - pair.clock.now <= 5.334
    pair.net.tick(6)
    assert pair.delivered_to(pair.b) == [pkt]


def test_give_up_after_retries_drops_staged() -> None:
    pair = make_pair()
    pair.net.filter = lambda s, d, m: False
    for i in range(3):
        pair.a_to_b(bytes([i]))
    pair.net.tick(130, step=0.5)
    initiations = [k for k in kinds(pair) if k[1] == MSG_INITIATION]
    # wireguard-go: the first send plus retries while attempts <= 18: 20 in ~100 s.
    assert len(initiations) == 20
    failed = [e for e in pair.events_of(pair.a) if isinstance(e, HandshakeFailed)]
    assert len(failed) == 1 and failed[0].dropped_packets == 3
    assert pair.a.stats().drops["handshake_timeout"] == 3
    assert pair.a.peer(pair.b.public_key).staged == type(pair.a.peer(pair.b.public_key).staged)()


def test_passive_keepalive_after_receiving_data() -> None:
    pair = established()
    start = len(pair.net.sent)
    pair.a_to_b(b"one-way")
    pair.net.roundtrip()
    pair.net.tick(9)
    assert ("b", 4, 32) not in kinds(pair, start)
    pair.net.tick(2)
    assert kinds(pair, start).count(("b", 4, 32)) == 1  # one keepalive, then quiet
    pair.net.tick(30)
    assert kinds(pair, start).count(("b", 4, 32)) == 1


def test_persistent_keepalive() -> None:
    pair = established(persistent_keepalive=25)
    start = pair.clock.now
    times: list[float] = []
    for _ in range(100):
        mark = len(pair.net.sent)
        pair.net.tick(1)
        times += [pair.clock.now - start for k in kinds(pair, mark) if k == ("a", 4, 32)]
    # b's passive keepalive (10 s after a's data) is a traversal that re-arms the timer.
    assert times == [35.0, 60.0, 85.0]


def test_persistent_keepalive_starts_a_session() -> None:
    pair = make_pair()
    pair.a.set_persistent_keepalive(pair.b.public_key, 15, pair.clock.now)
    pair.net.roundtrip()
    assert any(isinstance(e, HandshakeCompleted) for e in pair.events_of(pair.b))
    assert ("a", 4, 32) in kinds(pair)


def test_dead_peer_triggers_new_handshake() -> None:
    pair = established()
    pair.net.filter = lambda s, d, m: s != pair.b_addr  # b's replies are lost
    start = len(pair.net.sent)
    pair.a_to_b(b"anyone?")
    pair.net.roundtrip()
    pair.net.tick(16, step=0.25)
    assert ("a", MSG_INITIATION, 148) in kinds(pair, start)


def test_cookie_path_under_load() -> None:
    pair = make_pair()
    pair.b.under_load = True
    pkt = pair.a_to_b(b"busy?")
    pair.net.roundtrip()
    assert kinds(pair)[:2] == [("a", 1, 148), ("b", 3, 64)]
    assert pair.b.stats().drops == {"cookie_sent": 1}
    assert pair.delivered_to(pair.b) == []
    pair.net.tick(6)  # the retransmitted initiation carries mac2
    assert pair.delivered_to(pair.b) == [pkt]
    assert pair.b.stats().drops == {"cookie_sent": 1}


def test_automatic_under_load_and_rate_limit() -> None:
    clock = FakeClock()
    b = Device(generate_private_key(seeded_rng(5)), rng=seeded_rng(6))
    gen = CookieGenerator(b.public_key)
    ident = StaticIdentity.from_private(generate_private_key(seeded_rng(7)))
    b.add_peer(ident.public, allowed_ips=["10.0.0.1/32"])
    msgs = [
        gen.add_macs(
            InitiatorHandshake.create(
                ident, b.public_key, None, i, 1e9 + i, rng=seeded_rng(i)
            ).message,
            clock.now,
        )
        for i in range(200)
    ]
    b.receive_datagrams([(m, ("198.51.100.7", 9)) for m in msgs], clock.now)
    assert b.stats().handshakes_queued == 200
    assert b.process_handshakes(clock.now, 10) == 190
    # A backlog of 128 in the handshake queue is load (wireguard-go): mac2 is required.
    assert b.stats().drops == {"cookie_sent": 10}
    assert b.process_handshakes(clock.now) == 0
    assert b.is_under_load(clock.now + 0.9)  # it lasts a second after the backlog
    assert b.stats().drops == {"cookie_sent": 200}
    assert not b.is_under_load(clock.now + 1.5)


def test_many_handshakes_in_a_second_are_load_even_without_a_backlog() -> None:
    clock = FakeClock()
    b = Device(generate_private_key(seeded_rng(5)), rng=seeded_rng(6))
    gen = CookieGenerator(b.public_key)
    stranger = StaticIdentity.from_private(generate_private_key(seeded_rng(7)))
    msg = gen.add_macs(
        InitiatorHandshake.create(stranger, b.public_key, None, 1, 1e9, rng=seeded_rng(1)).message,
        clock.now,
    )
    for i in range(200):  # one at a time: the queue never backs up
        receive(b, [(msg, ("198.51.100.7", 9))], clock.now + i * 0.001)
    drops = b.stats().drops
    assert drops["unknown_peer"] == 128 and drops["cookie_sent"] == 200 - 128
    assert b.is_under_load(clock.now + 1.1) and not b.is_under_load(clock.now + 1.3)


def test_the_handshake_queue_is_bounded_and_counts_what_it_sheds() -> None:
    clock = FakeClock()
    b = Device(generate_private_key(seeded_rng(5)), rng=seeded_rng(6))
    gen = CookieGenerator(b.public_key)
    stranger = StaticIdentity.from_private(generate_private_key(seeded_rng(7)))
    msg = gen.add_macs(
        InitiatorHandshake.create(stranger, b.public_key, None, 1, 1e9, rng=seeded_rng(1)).message,
        clock.now,
    )
    b.receive_datagrams([(msg, ("198.51.100.7", 9))] * (HANDSHAKE_QUEUE_SIZE + 10), clock.now)
    assert b.handshakes_waiting == HANDSHAKE_QUEUE_SIZE == 1024
    assert b.stats().drops == {"handshake_queue_full": 10}
    assert b.process_handshakes(clock.now, 16) == HANDSHAKE_QUEUE_SIZE - 16
    assert b.stats().drops["cookie_sent"] == 16
    # The answers wait in the outbox, one datagram each, for the shell's next flush.
    assert sum(len(g) for _, g in b.datagrams_to_send()) == 16


def test_data_does_not_wait_behind_queued_handshakes() -> None:
    pair = established()
    gen = CookieGenerator(pair.b.public_key)
    stranger = StaticIdentity.from_private(generate_private_key(seeded_rng(7)))
    flood = gen.add_macs(
        InitiatorHandshake.create(
            stranger, pair.b.public_key, None, 1, 1e9, rng=seeded_rng(1)
        ).message,
        pair.clock.now,
    )
    pkt = pair.a_to_b(b"data")
    (_, [sealed]), *_ = pair.a.datagrams_to_send()
    batch = [(flood, ("198.51.100.7", 9))] * 500 + [(sealed, pair.a_addr)]
    assert pair.b.receive_datagrams(batch, pair.clock.now) == [pkt]
    assert pair.b.handshakes_waiting == 500


def test_replayed_transport_and_initiation_rejected() -> None:
    pair = make_pair()
    pair.a_to_b(b"once")
    pair.net.roundtrip()
    to_b = [d for s, _, d in pair.net.sent if s == pair.a_addr]
    init, transport = to_b[0], to_b[1]
    assert pair.b.receive_datagrams([(transport, pair.a_addr)], pair.clock.now) == []
    assert receive(pair.b, [(init, pair.a_addr)], pair.clock.now) == []
    drops = pair.b.stats().drops
    assert drops["replay"] == 1
    assert drops["handshake_replay"] == 1
    assert pair.delivered_to(pair.b) != []


def test_initiation_flood_limit() -> None:
    clock = FakeClock()
    b = Device(generate_private_key(seeded_rng(5)), rng=seeded_rng(6))
    ident = StaticIdentity.from_private(generate_private_key(seeded_rng(7)))
    b.add_peer(ident.public, allowed_ips=["10.0.0.1/32"])
    gen = CookieGenerator(b.public_key)

    def initiation(index: int, wall: float) -> bytes:
        hs = InitiatorHandshake.create(
            ident, b.public_key, None, index, wall, rng=seeded_rng(index)
        )
        return gen.add_macs(hs.message, clock.now)

    src = ("198.51.100.7", 9)
    receive(b, [(initiation(1, 1e9), src)], clock.now)
    receive(b, [(initiation(2, 1e9 + 1), src)], clock.now + 0.01)
    receive(b, [(initiation(3, 1e9 + 2), src)], clock.now + 0.05)
    out = b.datagrams_to_send()
    assert sum(len(group) for _, group in out) == 2  # responses to 1 and 3
    assert b.stats().drops == {"handshake_flood": 1}


def test_bad_mac1_and_garbage_counted() -> None:
    pair = make_pair()
    pair.a_to_b(b"x")
    (_, [init]), *_ = pair.a.datagrams_to_send()
    bad = init[:-32] + bytes(32)
    now = pair.clock.now
    got = receive(
        pair.b,
        [
            (bad, pair.a_addr),
            (b"", pair.a_addr),
            (b"\x01\x00\x00\x00" + bytes(10), pair.a_addr),
            (b"\x09\x00\x00\x00" + bytes(40), pair.a_addr),
            (b"\x04\x00\x00\x00" + bytes(40), pair.a_addr),
            (b"\x04\x01\x00\x00" + bytes(40), pair.a_addr),
            (b"\x02" + bytes(91), pair.a_addr),
        ],
        now,
    )
    assert got == []
    assert pair.b.stats().drops == {
        "mac1": 2,
        "bad_size": 2,
        "bad_type": 2,
        "unknown_index": 1,
    }


def test_roaming_follows_newest_authenticated_datagram() -> None:
    pair = established()
    new_addr = ("203.0.113.9", 40000)
    pair.net.move(pair.a_addr, new_addr)
    pair.a_addr = new_addr
    pkt = pair.a_to_b(b"from elsewhere")
    pair.net.roundtrip()
    assert pair.delivered_to(pair.b) == [pkt]
    assert pair.b.peer(pair.a.public_key).endpoint == new_addr
    changes = [e for e in pair.events_of(pair.b) if isinstance(e, PeerEndpointChanged)]
    assert changes[-1].new == new_addr
    reply = pair.b_to_a(b"back")
    pair.net.roundtrip()
    assert pair.delivered_to(pair.a) == [reply]
    # A forged datagram from elsewhere does not move the endpoint.
    pair.b.receive_datagrams([(b"\x04\x00\x00\x00" + bytes(60), ("6.6.6.6", 1))], 0.0)
    assert pair.b.peer(pair.a.public_key).endpoint == new_addr


def test_allowed_ips_enforced_on_receive() -> None:
    pair = established()
    spoofed = ipv4_packet("10.0.0.99", "10.0.0.2", b"spoof")
    pair.a.send_packets([spoofed], pair.clock.now)
    pair.net.roundtrip()
    assert pair.delivered_to(pair.b) == []
    assert pair.b.stats().drops == {"allowed_ips": 1}
    pair.b.add_allowed_ips(pair.a.public_key, ["10.0.0.0/24"])
    pair.a.send_packets([spoofed], pair.clock.now)
    pair.net.roundtrip()
    assert pair.delivered_to(pair.b) == [spoofed]


def test_two_peers_routed_by_allowed_ips() -> None:
    clock = FakeClock()
    net = Network(clock)
    keys = [generate_private_key(seeded_rng(100 + i)) for i in range(3)]
    hub, x, y = (Device(k, rng=seeded_rng(200 + i)) for i, k in enumerate(keys))
    addrs = [("192.0.2.10", 1), ("192.0.2.11", 2), ("192.0.2.12", 3)]
    hub.add_peer(public_key(keys[1]), endpoint=addrs[1], allowed_ips=["10.1.0.0/16"])
    hub.add_peer(public_key(keys[2]), endpoint=addrs[2], allowed_ips=["10.2.0.0/16", "10.0.0.0/8"])
    x.add_peer(public_key(keys[0]), allowed_ips=["0.0.0.0/0"])
    y.add_peer(public_key(keys[0]), allowed_ips=["0.0.0.0/0"])
    for addr, dev in zip(addrs, (hub, x, y), strict=True):
        net.attach(addr, dev)
    to_x = ipv4_packet("10.9.0.1", "10.1.2.3", b"x")
    to_y = ipv4_packet("10.9.0.1", "10.2.2.3", b"y")
    to_y_too = ipv4_packet("10.9.0.1", "10.77.0.1", b"y2")  # the /8 catches it
    nowhere = ipv4_packet("10.9.0.1", "192.168.1.1", b"?")
    hub.send_packets([to_x, to_y, to_y_too, nowhere], clock.now)
    net.roundtrip()
    assert net.delivered[addrs[1]] == [to_x]
    assert net.delivered[addrs[2]] == [to_y, to_y_too]
    assert hub.stats().drops == {"no_route": 1}
    # Moving a prefix to another peer re-routes it.
    hub.add_allowed_ips(public_key(keys[1]), ["10.77.0.0/16"])
    hub.send_packets([to_y_too], clock.now)
    net.roundtrip()
    assert net.delivered[addrs[1]] == [to_x, to_y_too]


def test_key_zeroing_after_540s() -> None:
    pair = established()
    pair.net.tick(541, step=5)
    assert any(isinstance(e, KeysZeroed) for e in pair.events_of(pair.a))
    assert list(pair.a.peer(pair.b.public_key).keypairs()) == []
    # A new packet simply starts a new handshake.
    pkt = pair.a_to_b(b"again")
    pair.net.roundtrip()
    assert pair.delivered_to(pair.b) == [pkt]


def test_simultaneous_initiation_resolves() -> None:
    pair = make_pair(b_knows_a_endpoint=True)
    p1 = pair.a_to_b(b"1")
    p2 = pair.b_to_a(b"2")
    pair.net.roundtrip()
    pair.net.tick(12, step=0.5)
    assert pair.delivered_to(pair.b) == [p1]
    assert pair.delivered_to(pair.a) == [p2]


def test_staged_queue_is_bounded() -> None:
    # 128 per peer, as wireguard-go (QueueStagedSize) and the kernel (MAX_STAGED_PACKETS).
    pair = make_pair()
    pair.net.filter = lambda s, d, m: False
    pkts = [pair.a_to_b(i.to_bytes(2, "big")) for i in range(MAX_STAGED_PACKETS + 6)]
    assert MAX_STAGED_PACKETS == 128
    assert pair.a.stats().drops["queue_full"] == 6
    assert len(pair.a.peer(pair.b.public_key).staged) == 128
    assert pair.a.stats().peers[0].staged_packets == 128
    pair.net.roundtrip()  # the first initiation is lost
    pair.net.filter = None
    pair.net.tick(6)
    assert pair.delivered_to(pair.b) == pkts[6:]


def test_a_staged_keepalive_pushed_out_is_not_counted_as_a_lost_packet() -> None:
    pair = make_pair()
    pair.net.filter = lambda s, d, m: False
    key = pair.b.public_key
    pair.a.set_persistent_keepalive(key, 25, pair.clock.now)  # stages b"" (no session yet)
    assert list(pair.a.peer(key).staged) == [b""]
    for i in range(MAX_STAGED_PACKETS):
        pair.a_to_b(i.to_bytes(2, "big"))
    assert "queue_full" not in pair.a.stats().drops  # the keepalive made room
    pair.a_to_b(b"one more")
    assert pair.a.stats().drops["queue_full"] == 1


def test_no_endpoint_counted() -> None:
    pair = make_pair()
    pair.b_to_a(b"b does not know where a is")
    assert pair.b.stats().drops == {"no_endpoint": 1}


def test_psk_mismatch_fails_handshake() -> None:
    pair = make_pair(psk=bytes(range(32)))
    pair.b.set_preshared_key(pair.a.public_key, bytes(32))
    pair.a_to_b(b"x")
    pair.net.roundtrip()
    assert pair.a.stats().drops == {"handshake_failed": 1}
    assert pair.delivered_to(pair.b) == []


def test_config_api_and_misuse() -> None:
    pair = make_pair()
    dev = pair.a
    b_key = pair.b.public_key
    with pytest.raises(ValueError, match="already exists"):
        dev.add_peer(b_key)
    with pytest.raises(ValueError, match="own public key"):
        dev.add_peer(dev.public_key)
    with pytest.raises(ValueError, match="32 bytes"):
        dev.add_peer(b"short")
    with pytest.raises(KeyError):
        dev.remove_peer(bytes(32))
    with pytest.raises(ValueError, match="endpoint"):
        dev.set_endpoint(b_key, ("1.2.3.4", 0))
    with pytest.raises(ValueError, match="keepalive"):
        dev.set_persistent_keepalive(b_key, 70000, 0.0)
    with pytest.raises(ValueError, match="invalid allowed-ip"):
        dev.add_allowed_ips(b_key, ["10.0.0.0/99"])
    dev.replace_allowed_ips(b_key, ["10.5.0.0/16", "fd00::/64"])
    assert [str(n) for n in dev.peer(b_key).allowed_ips] == ["10.5.0.0/16", "fd00::/64"]
    dev.remove_allowed_ips(b_key, ["fd00::/64"])
    assert [str(n) for n in dev.peer(b_key).allowed_ips] == ["10.5.0.0/16"]
    dev.set_endpoint(b_key, ("198.51.100.1", 5))
    assert dev.peer(b_key).endpoint == ("198.51.100.1", 5)
    dev.remove_all_peers()
    assert dev.peers == []
    old = dev.public_key
    dev.set_private_key(generate_private_key(seeded_rng(99)))
    assert dev.public_key != old


def test_remove_peer_forgets_sessions() -> None:
    pair = established()
    dev = pair.b
    dev.remove_peer(pair.a.public_key)
    pair.a_to_b(b"to nowhere")
    pair.net.roundtrip()
    assert dev.stats().drops == {"unknown_index": 1}


def test_stats_report_per_peer_counters() -> None:
    pair = established()
    stats = pair.a.stats()
    (peer,) = stats.peers
    assert peer.public_key == pair.b.public_key
    assert peer.endpoint == pair.b_addr
    assert peer.tx_bytes > 0 and peer.rx_bytes > 0
    assert peer.last_handshake == pytest.approx(pair.clock.now + 1.7e9)
    assert stats.packets_sealed == 1
    totals = pair.a.stats(peers=False)  # the same counters without the per-peer part
    assert totals.peers == () and totals.packets_sealed == 1
    assert (totals.drops, totals.packets_opened) == (stats.drops, stats.packets_opened)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200), max_size=10))
def test_arbitrary_datagrams_never_raise(datagrams: list[bytes]) -> None:
    pair = _FUZZ_PAIR
    out = pair.b.receive_datagrams([(d, pair.a_addr) for d in datagrams], pair.clock.now)
    assert out == []  # nothing random authenticates


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2), st.integers(0, 2000), st.integers(1, 255))
def test_corrupted_real_messages_never_raise(which: int, pos: int, xor: int) -> None:
    pair = _FUZZ_PAIR
    real = _FUZZ_MESSAGES[which]
    pos %= len(real)
    bad = bytearray(real)
    bad[pos] ^= xor
    out = pair.b.receive_datagrams([(bytes(bad), pair.a_addr)], pair.clock.now)
    assert out == []


def _fuzz_setup() -> tuple[WgPair, list[bytes]]:
    pair = make_pair(seed=77)
    pair.a_to_b(b"fuzz")
    pair.net.roundtrip()
    msgs = [d for s, _, d in pair.net.sent]
    return pair, msgs[:3]


_FUZZ_PAIR, _FUZZ_MESSAGES = _fuzz_setup()


def test_retransmit_replaces_an_initiation_that_was_never_sent() -> None:
    # `wiretun up` with PersistentKeepalive: the initiation is queued before anything drains
    # the core; at the retransmit only the newer initiation may go out, or the responder
    # drops it as a flood and the initiator the response to the older one as unknown_index.
    pair = make_pair(b_knows_a_endpoint=False)
    a, b, clock = pair.a, pair.b, pair.clock
    a.set_persistent_keepalive(a.peers[0].public_key, 25, clock.now)
    due = a.next_timer()
    assert due is not None
    clock.now = due
    a.handle_timers(due)
    out = [d for _, group in a.datagrams_to_send() for d in group]
    assert [d[0] for d in out] == [MSG_INITIATION]
    assert a.peers[0].tx_bytes == len(out[0])
    receive(b, [(d, pair.a_addr) for d in out], clock.now)
    response = [d for _, group in b.datagrams_to_send() for d in group]
    receive(a, [(d, pair.b_addr) for d in response], clock.now)
    assert a.stats().drops == {} and b.stats().drops == {}
    assert a.stats().peers[0].has_session


def test_persistent_keepalive_is_sent_at_once_only_when_turned_on() -> None:
    pair = established()
    a, key, clock = pair.a, pair.b.public_key, pair.clock
    clock.advance(1)
    pair.net.roundtrip()
    a.set_persistent_keepalive(key, 25, clock.now)  # 0 -> 25: one keepalive now
    assert [len(d) for _, g in a.datagrams_to_send() for d in g] == [32]
    a.set_persistent_keepalive(key, 25, clock.now)  # 25 -> 25: nothing
    a.set_persistent_keepalive(key, 30, clock.now)  # 25 -> 30: nothing
    assert a.datagrams_to_send() == []
    # The deadline the keepalive armed stays (wireguard-go): 30 applies from the next one.
    assert a.peer(key).timers.persistent_at == clock.now + 25
    a.set_persistent_keepalive(key, 0, clock.now)
    a.set_persistent_keepalive(key, 25, clock.now)  # 0 -> 25 again: a keepalive
    assert [len(d) for _, g in a.datagrams_to_send() for d in g] == [32]


def test_key_confirmation_sends_staged_packets_to_the_new_endpoint() -> None:
    pair = make_pair(b_knows_a_endpoint=False)
    a, b, clock = pair.a, pair.b, pair.clock
    pair.a_to_b()  # a stages it and initiates
    init = [(d, pair.a_addr) for _, g in a.datagrams_to_send() for d in g]
    receive(b, init, clock.now)
    response = [(d, pair.b_addr) for _, g in b.datagrams_to_send() for d in g]
    staged = pair.b_to_a(b"from-b")  # b holds only unconfirmed keys: staged
    assert b.datagrams_to_send() == []
    receive(a, response, clock.now)
    confirming = [d for _, g in a.datagrams_to_send() for d in g]
    roamed = ("198.51.100.7", 4444)  # a moved before its first transport packet
    assert b.receive_datagrams([(d, roamed) for d in confirming], clock.now)
    out = b.datagrams_to_send()
    assert [ep for ep, _ in out] == [roamed]
    assert b.peer(a.public_key).endpoint == roamed
    assert a.receive_datagrams([(d, pair.b_addr) for d in out[0][1]], clock.now) == [staged]


def test_set_private_key_starts_a_new_handshake_at_once() -> None:
    pair = established()
    a, b, clock = pair.a, pair.b, pair.clock
    clock.advance(1)
    in_flight = pair.b_to_a(b"sealed under the old session")
    from_b = [(d, pair.b_addr) for _, g in b.datagrams_to_send() for d in g]
    old_public = a.public_key
    new_key = generate_private_key(seeded_rng(77))
    a.set_private_key(new_key)
    # Sessions may still receive: what b sent before the change arrives.
    assert a.receive_datagrams(from_b, clock.now) == [in_flight]
    # But not send: the next packet waits for a handshake under the new key, started now.
    staged = pair.a_to_b(b"after the change")
    out = [d for _, g in a.datagrams_to_send() for d in g]
    assert [d[0] for d in out] == [MSG_INITIATION]
    assert a.stats().peers[0].staged_packets == 1
    # b learns a's new key (as `wg set` would do there); the handshake then completes.
    b.remove_peer(old_public)
    b.add_peer(public_key(new_key), allowed_ips=["10.0.0.1/32"])
    receive(b, [(d, pair.a_addr) for d in out], clock.now)
    pair.net.roundtrip()
    assert pair.delivered_to(b) == [staged]


def test_packets_larger_than_the_mtu_are_padded_like_wireguard_go() -> None:
    # 1430 bytes over MTU 1420: the last unit (10 bytes) pads to 16, so 6 bytes of padding,
    # on the staged path (first batch) and on the direct path (established session) alike.
    pair = make_pair()
    big = ipv4_packet("10.0.0.1", "10.0.0.2", b"z" * (1430 - 20))
    for _ in range(2):
        start = len(pair.net.sent)
        pair.a.send_packets([big], pair.clock.now)
        pair.net.roundtrip()
        sent = [d for s, _, d in pair.net.sent[start:] if s == pair.a_addr and d[0] == 4]
        assert [len(d) - 32 for d in sent] == [1436]
    assert pair.delivered_to(pair.b) == [big, big]


def test_sealed_sizes_follow_padding_size_around_the_mtu() -> None:
    """The seal loop's inlined padding (packets up to the MTU) and padding_size agree."""
    from wiretun.testing.wgpair import ipv4_packet, make_pair
    from wiretun.wireguard.session import padding_size

    pair = make_pair(seed=5)
    pair.a_to_b(b"hello")
    pair.net.roundtrip()
    pair.b_to_a(b"hello")
    pair.net.roundtrip()
    pair.a.datagrams_to_send()
    mtu = pair.a.mtu
    sizes = [20, 21, 35, 36, 1390, mtu - 17, mtu - 1, mtu, mtu + 1, mtu + 15, 2 * mtu + 3]
    packets = [ipv4_packet("10.0.0.1", "10.0.0.2", bytes(n - 20)) for n in sizes]
    pair.a.send_packets(packets, pair.clock.now)
    sealed = [d for _, group in pair.a.datagrams_to_send() for d in group]
    lengths = [len(p) for p in packets]
    assert lengths[-2] == mtu + 15  # the sizes above are what the Device sees
    assert [len(d) for d in sealed] == [32 + n + padding_size(n, mtu) for n in lengths]


def test_next_timer_and_handle_timers_over_many_peers_match_the_scan() -> None:
    # The Device answers from a heap (TimerQueue); the scan over every peer is the reference,
    # and handle_timers visits the due peers in the order they were added, as the scan did.
    rng = seeded_rng(9)
    dev = Device(generate_private_key(rng), rng=rng)
    keys = [public_key(generate_private_key(rng)) for _ in range(6)]
    for i, key in enumerate(keys):
        dev.add_peer(key, endpoint=(f"192.0.2.{i + 1}", 51820))
    for key in reversed(keys):  # arm the later-added peers first
        dev.set_persistent_keepalive(key, 25, 0.0)
    dev.remove_peer(keys[2])

    def scan() -> float | None:
        deadlines = [d for p in dev.peers if (d := p.timers.next_deadline()) is not None]
        return min(deadlines) if deadlines else None

    first = [host for (host, _), _ in dev.datagrams_to_send()]
    assert first == [f"192.0.2.{i}" for i in (6, 5, 4, 2, 1)]  # the initiations
    now = 0.0
    together = 0
    for step in range(40):
        assert dev.next_timer() == scan()
        due = dev.next_timer()
        assert due is not None
        now = due + (1.0 if step % 4 == 0 else 0.0)  # late now and then: several are due
        dev.handle_timers(now)
        sent = [host for (host, _), _ in dev.datagrams_to_send()]
        # Several peers due at once answer in the order they were added.
        assert sent == sorted(sent, key=lambda h: int(h.rsplit(".", 1)[1]))
        together = max(together, len(sent))
    assert together >= 3 and now > 25  # retransmits and persistent keepalives came and went
    dev.remove_all_peers()
    assert dev.next_timer() is None


def _many_peers(n: int) -> tuple[Device, list[bytes]]:
    rng = seeded_rng(21)
    dev = Device(generate_private_key(rng), rng=rng)
    keys = [public_key(generate_private_key(rng)) for _ in range(n)]
    for i, key in enumerate(keys):
        host = f"10.1.{i // 250}.{i % 250 + 1}"
        dev.add_peer(key, endpoint=(f"198.18.{i // 250}.{i % 250 + 1}", 51820),
                     allowed_ips=[f"{host}/32"])  # fmt: skip
    return dev, keys


def _poke_all(dev: Device, n: int, now: float) -> None:
    dev.send_packets(
        [ipv4_packet("10.0.0.1", f"10.1.{i // 250}.{i % 250 + 1}", b"poke") for i in range(n)],
        now,
    )


def test_initiations_over_all_peers_are_paced() -> None:
    # One packet to each of 300 peers that never answer: a burst of INITIATION_BURST
    # initiations, then INITIATION_RATE a second; no call pays for more than the burst.
    n = 300
    dev, _ = _many_peers(n)
    now = 100.0
    _poke_all(dev, n, now)
    sent_at: dict[str, list[float]] = {host: [now] for (host, _), _ in dev.datagrams_to_send()}
    assert len(sent_at) == INITIATION_BURST
    assert dev.stats().initiations_waiting == n - INITIATION_BURST
    assert dev.stats().peers[40].staged_packets == 1  # what waits for a handshake stays
    while now < 116.0:
        due = dev.next_timer()
        assert due is not None
        now = due
        dev.handle_timers(now)
        out = dev.datagrams_to_send()
        assert sum(len(g) for _, g in out) <= INITIATION_BURST
        for (host, _), group in out:
            assert all(d[0] == MSG_INITIATION for d in group)
            sent_at.setdefault(host, []).append(now)
    # All 300 got their first initiation at the paced rate, and the per-peer rule still
    # holds: retransmits every 5 s (plus jitter and their wait), never sooner.
    assert len(sent_at) == n
    first = sorted(times[0] for times in sent_at.values())
    assert first[-1] - first[0] >= (n - INITIATION_BURST - 1) / INITIATION_RATE
    assert first[-1] < 100.0 + n / INITIATION_RATE
    for times in sent_at.values():
        assert len(times) in (3, 4)
        assert all(b - a >= REKEY_TIMEOUT for a, b in itertools.pairwise(times))


def test_a_peer_waiting_for_the_pacer_keeps_its_place_and_leaves_when_removed() -> None:
    n = INITIATION_BURST + 8
    dev, keys = _many_peers(n)
    now = 0.0
    _poke_all(dev, n, now)
    dev.datagrams_to_send()
    assert dev.stats().initiations_waiting == 8
    _poke_all(dev, n, now + 0.0001)  # a second packet each: no second place in the queue
    assert dev.stats().initiations_waiting == 8
    burst = INITIATION_BURST
    dev.remove_peer(keys[burst + 3])
    dev.set_endpoint(keys[burst + 4], None)  # no endpoint any more: leaves without a token
    assert dev.stats().initiations_waiting == 7
    hosts = []
    while (due := dev.next_timer()) is not None and due < 1.0:
        dev.handle_timers(due)
        hosts += [h for (h, _), _ in dev.datagrams_to_send()]
    # First come, first served: peers burst+1.. in order (hosts count from 1), minus the two.
    assert hosts == [f"198.18.0.{burst + i}" for i in (1, 2, 3, 6, 7, 8)]
    assert dev.stats().initiations_waiting == 0
