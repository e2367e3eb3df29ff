"""The Handshaker on its own: two of them complete a handshake through their outboxes."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from wiretun.testing.wgpair import seeded_rng
from wiretun.wireguard.allowedips import AllowedIPs
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
