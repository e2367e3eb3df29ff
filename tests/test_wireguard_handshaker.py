"""The Handshaker on its own: two of them complete a handshake through their outboxes."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pytest

from wiretun.testing.wgpair import seeded_rng
from wiretun.wireguard.allowedips import AllowedIPs
from wiretun.wireguard.cookie import CookieChecker
from wiretun.wireguard.crypto import generate_private_key
from wiretun.wireguard.events import Endpoint, Event, HandshakeCompleted
from wiretun.wireguard.handshake import StaticIdentity
from wiretun.wireguard.handshaker import Handshaker
from wiretun.wireguard.messages import INITIATION_SIZE, MSG_INITIATION, MSG_RESPONSE
from wiretun.wireguard.outbox import Outbox
from wiretun.wireguard.pacing import INITIATION_BURST
from wiretun.wireguard.peer import Peer
from wiretun.wireguard.stats import DropReason, Drops

A: Endpoint = ("192.0.2.1", 51820)
B: Endpoint = ("192.0.2.2", 51820)


@dataclass
class Side:
    handshaker: Handshaker
    peers: dict[bytes, Peer]
    outbox: Outbox = field(default_factory=Outbox)
    events: deque[Event] = field(default_factory=deque)
    drops: Drops = field(default_factory=Drops)

    @property
    def public(self) -> bytes:
        return self.handshaker.identity.public

    def sent(self) -> list[bytes]:
        return [d for _, group in self.outbox.drain() for d in group]


def side(seed: int) -> Side:
    rng = seeded_rng(seed)
    identity = StaticIdentity.from_private(generate_private_key(rng))
    peers: dict[bytes, Peer] = {}
    outbox, events, drops = Outbox(), deque[Event](), Drops()
    hs = Handshaker(
        identity, peers=peers, outbox=outbox, events=events, drops=drops, rng=rng,
        wall_clock_offset=1.7e9,
    )  # fmt: skip
    return Side(hs, peers, outbox, events, drops)


def two_sides() -> tuple[Side, Side, Peer, Peer]:
    """a knows b at B; b knows a without an endpoint. Returns (a, b, b-in-a, a-in-b)."""
    a, b = side(1), side(2)
    pb = Peer(b.public, AllowedIPs(), seeded_rng(3), endpoint=B)
    pa = Peer(a.public, AllowedIPs(), seeded_rng(4))
    a.peers[b.public] = pb
    b.peers[a.public] = pa
    return a, b, pb, pa


def test_two_handshakers_complete_a_handshake() -> None:
    a, b, pb, pa = two_sides()
    a.handshaker.initiate(pb, 10.0, retry=False)
    (init,) = a.sent()
    assert init[0] == MSG_INITIATION and pb.handshake is not None
    assert pb.timers.retransmit_at is not None

    b.handshaker.accept(init, A)
    assert b.handshaker.waiting == 1 and b.sent() == []  # nothing until processed
    assert b.handshaker.process(10.0) == (0, {pa: A})
    (response,) = b.sent()
    assert response[0] == MSG_RESPONSE
    assert pa.endpoint == A and pa.current is None and pa.next is not None  # parked
    assert b.handshaker.sessions[pa.next.local_index] == (pa.next, pa)

    a.handshaker.accept(response, B)
    assert a.handshaker.process(10.0) == (0, {pb: B})
    assert pb.current is not None and pb.handshake is None
    assert list(pb.staged) == [b""]  # key confirmation: a keepalive if no data waits
    assert [type(e) for e in a.events] == [HandshakeCompleted]
    assert a.handshaker.completed == 1 and pb.last_handshake == 10.0 + 1.7e9

    kp = pa.next
    b.handshaker.confirm(pa, kp, 10.1)
    assert pa.current is kp and pa.next is None and b.handshaker.completed == 1
    assert pb.current.send_key == kp.recv_key and pb.current.recv_key == kp.send_key
    assert a.drops.snapshot() == {} and b.drops.snapshot() == {}


def test_a_newer_initiation_replaces_one_still_in_the_outbox() -> None:
    a, _, pb, _ = two_sides()
    a.handshaker.initiate(pb, 0.0, retry=False)
    first = pb.handshake
    a.handshaker.initiate(pb, 5.5, retry=True)  # REKEY_TIMEOUT later, nothing drained
    (init,) = a.sent()
    assert pb.handshake is not first and pb.handshake is not None
    assert int.from_bytes(init[4:8], "little") == pb.handshake.sender_index
    assert pb.tx_bytes == INITIATION_SIZE  # the withdrawn one is not counted as sent


def test_initiations_within_rekey_timeout_are_not_repeated() -> None:
    a, _, pb, _ = two_sides()
    a.handshaker.initiate(pb, 0.0, retry=False)
    a.handshaker.initiate(pb, 4.9, retry=False)
    assert len(a.sent()) == 1


def test_forget_clears_sessions_pending_and_the_pacer_turn() -> None:
    a = side(1)
    peers = [
        Peer(side(10 + i).public, AllowedIPs(), seeded_rng(i), endpoint=B)
        for i in range(INITIATION_BURST + 2)
    ]
    for p in peers:
        a.peers[p.public_key] = p
        a.handshaker.initiate(p, 0.0, retry=False)
    assert a.handshaker.initiations_waiting == 2
    late = peers[-1]
    a.handshaker.forget(late)
    assert a.handshaker.initiations_waiting == 1
    a.handshaker.forget(peers[0])
    assert peers[0].handshake is None
    due = a.handshaker.next_initiation_due()
    assert due is not None
    a.handshaker.release(due)
    assert a.handshaker.initiations_waiting == 0 and late.handshake is None
    assert peers[-2].handshake is not None  # the one still waiting got its turn


def test_accept_checks_type_and_size_and_bounds_the_queue() -> None:
    b = side(2)
    for junk in (b"", b"\x01\x00\x00", b"\x07\x00\x00\x00" + bytes(40), b"\x01" + bytes(99)):
        b.handshaker.accept(junk, A)
    assert b.drops.snapshot() == {"bad_size": 3, "bad_type": 1}
    msg = b"\x01\x00\x00\x00" + bytes(INITIATION_SIZE - 4)
    for _ in range(1030):
        b.handshaker.accept(memoryview(msg), A)  # copied: the buffer may be reused
    assert b.handshaker.waiting == 1024
    assert b.drops.count(DropReason.HANDSHAKE_QUEUE_FULL) == 6
    assert b.handshaker.process(0.0, 24) == (1000, {})
    assert b.drops.snapshot()["mac1"] == 24


def test_static_static_is_computed_once_per_peer_and_forgotten_with_it() -> None:
    a, b, _, pa = two_sides()
    stranger = side(9).public
    assert b.handshaker.static_static(stranger) is None  # not a peer: nothing computed
    ss = b.handshaker.static_static(a.public)
    assert ss == a.handshaker.identity.static_static(b.public)  # the DH both sides share
    assert b.handshaker.static_static(a.public) is ss  # kept, not recomputed
    b.handshaker.forget(pa)
    del b.peers[a.public]
    assert b.handshaker.static_static(a.public) is None
    # A new identity: every precomputed DH was made with the old key and goes.
    before = a.handshaker.static_static(b.public)
    a.handshaker.change_identity(side(5).handshaker.identity)
    after = a.handshaker.static_static(b.public)
    assert after is not None and after != before
    assert after == a.handshaker.identity.static_static(b.public)


def test_handshakes_after_an_identity_change_use_the_new_static_static() -> None:
    a, b, pb, pa = two_sides()
    a.handshaker.initiate(pb, 0.0, retry=False)
    b.handshaker.accept(a.sent()[0], A)
    b.handshaker.process(0.0)
    assert pa.next is not None and len(b.sent()) == 1
    # b takes a new key; a learns it as a new peer and initiates again.
    b.handshaker.change_identity(side(6).handshaker.identity)
    del a.peers[pb.public_key]
    a.handshaker.forget(pb)
    pb2 = Peer(b.public, AllowedIPs(), seeded_rng(7), endpoint=B)
    a.peers[b.public] = pb2
    a.handshaker.initiate(pb2, 10.0, retry=False)
    b.handshaker.accept(a.sent()[0], A)
    assert b.handshaker.process(10.0) == (0, {pa: A})
    a.handshaker.accept(b.sent()[0], B)
    a.handshaker.process(10.0)
    assert pb2.current is not None and b.drops.snapshot() == {}


def test_initiation_from_a_stranger_is_dropped_as_unknown_peer() -> None:
    from scenarios.hostile import stranger_initiation

    b = side(2)
    b.handshaker.accept(stranger_initiation(b.public), A)
    assert b.handshaker.process(0.0) == (0, {})
    assert b.drops.snapshot() == {"unknown_peer": 1}
    assert b.sent() == []


def test_accept_does_no_crypto_and_sheds_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    # As wireguard-go: mac1 is checked when a message is processed, never on arrival, so
    # a flood that overflows the queue costs no crypto at all.
    checked: list[int] = []
    original = CookieChecker.check_mac1

    def counting(checker: CookieChecker, msg: bytes) -> bool:
        checked.append(len(msg))
        return original(checker, msg)

    monkeypatch.setattr(CookieChecker, "check_mac1", counting)
    b = side(2)
    flood = bytes([1, 0, 0, 0]) + bytes(INITIATION_SIZE - 4)
    for port in range(2000):
        b.handshaker.accept(flood, ("192.0.2.9", port))
    assert checked == [] and b.handshaker.waiting == 1024
    assert b.drops.snapshot() == {"handshake_queue_full": 2000 - 1024}
    b.handshaker.process(0.0, 8)
    assert checked == [INITIATION_SIZE] * 8
