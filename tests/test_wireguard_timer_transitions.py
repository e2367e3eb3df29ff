"""Device timer transitions against wireguard-go (device/timers.go, send.go, receive.go).

Each test drives two Devices on the fake clock through one event and checks the timer that
wireguard-go arms or clears for it, by its deadline and by what the peers then send.
"""

from __future__ import annotations

from wiretun.testing.wgpair import WgPair, make_pair
from wiretun.wireguard.events import HandshakeCompleted, HandshakeFailed, KeysZeroed
from wiretun.wireguard.messages import MSG_INITIATION, MSG_TRANSPORT
from wiretun.wireguard.timers import (
    KEEPALIVE_TIMEOUT,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
)

NEW_HANDSHAKE_AFTER = KEEPALIVE_TIMEOUT + REKEY_TIMEOUT  # 15 s without an answer
KEEPALIVE = (MSG_TRANSPORT, 32)


def sent_by(pair: WgPair, who: str, start: int = 0) -> list[tuple[int, int]]:
    """(message type, length) of each datagram `who` ('a' or 'b') sent since `start`."""
    addr = pair.a_addr if who == "a" else pair.b_addr
    return [(d[0], len(d)) for s, _, d in pair.net.sent[start:] if s == addr]


def initiations(pair: WgPair, who: str, start: int = 0) -> int:
    return sum(1 for kind, _ in sent_by(pair, who, start) if kind == MSG_INITIATION)


def silence(pair: WgPair, who: str) -> None:
    """Lose everything `who` sends from now on."""
    addr = pair.a_addr if who == "a" else pair.b_addr
    pair.net.filter = lambda src, dst, msg: src != addr


def assert_new_handshake_due(deadline: float | None, now: float) -> None:
    assert deadline is not None
    assert NEW_HANDSHAKE_AFTER <= deadline - now < NEW_HANDSHAKE_AFTER + REKEY_TIMEOUT_JITTER_MAX


# ---------------------------------------------------------------- timersDataSent


def test_initiator_staged_packet_sent_on_the_response_arms_new_handshake() -> None:
    # receive.go: the response is an authenticated receive (newHandshake.Del) *before*
    # SendKeepalive sends the staged packets, whose timersDataSent then arms the timer.
    pair = make_pair()
    pair.a_to_b(b"first")  # staged, initiation queued
    pair.net.step()  # initiation -> b, response queued
    pair.net.step()  # response -> a, a seals the staged packet
    now = pair.clock.now
    assert_new_handshake_due(pair.a.peer(pair.b.public_key).timers.new_handshake_at, now)
    assert_new_handshake_due(pair.a.next_timer(), now)
    # b hears the packet but every answer of b's is lost: wireguard-go re-initiates at
    # ~15 s, then retransmits every 5 s: three initiations in 30 s.
    silence(pair, "b")
    start = len(pair.net.sent)
    pair.net.tick(30)
    assert initiations(pair, "a", start) == 3


def test_responder_staged_packet_sent_on_key_confirmation_arms_new_handshake() -> None:
    # receive.go: the confirming packet makes SendStagedPackets run; the sent data arms
    # newHandshake and, being an authenticated send, cancels the passive keepalive that the
    # received data asked for (the batch's receive bookkeeping comes first).
    pair = make_pair()
    pair.a_to_b(b"first")
    pair.net.step()  # initiation -> b
    pair.b_to_a(b"early")  # b has only unconfirmed keys: staged
    pair.net.step()  # response -> a, a sends "first"
    pair.net.step()  # "first" -> b confirms the keys, b sends "early"
    now = pair.clock.now
    timers = pair.b.peer(pair.a.public_key).timers
    assert_new_handshake_due(timers.new_handshake_at, now)
    assert timers.keepalive_at is None
    silence(pair, "a")
    start = len(pair.net.sent)
    pair.net.tick(NEW_HANDSHAKE_AFTER + 1)
    assert KEEPALIVE not in sent_by(pair, "b", start)  # "early" was b's answer
    assert initiations(pair, "b", start) == 1


def established() -> WgPair:
    """a initiated; both have a confirmed session and everything has been answered."""
    pair = make_pair()
    pair.a_to_b(b"first")
    pair.net.roundtrip()
    pair.net.tick(KEEPALIVE_TIMEOUT + 1)  # b's passive keepalive answers "first"
    assert pair.delivered_to(pair.b)
    assert pair.a.peer(pair.b.public_key).timers.new_handshake_at is None
    return pair


# ---------------------------------------------------------------- zero keys


def test_zeroing_the_keys_drops_the_staged_packets() -> None:
    # timers.go expiredZeroKeyMaterial -> ZeroAndFlushAll: keypairs, the pending handshake
    # *and* the staged packets go; a later handshake does not deliver the stale packets.
    pair = established()
    derived = pair.clock.now - KEEPALIVE_TIMEOUT - 1  # established() ran 11 s past it
    pair.net.tick(derived + 535 - pair.clock.now)
    pair.net.filter = lambda src, dst, msg: False  # the network is down for a while
    stale = pair.a_to_b(b"stale")  # the keypair is 535 s old: staged, initiation
    peer = pair.a.peer(pair.b.public_key)
    assert len(peer.staged) == 1
    pair.net.tick(derived + 541 - pair.clock.now)
    assert any(isinstance(e, KeysZeroed) for e in pair.events_of(pair.a))
    assert len(peer.staged) == 0
    assert pair.a.stats().drops["keys_zeroed"] == 1
    pair.net.filter = None
    pair.net.tick(REKEY_TIMEOUT + 1)  # the retransmit timer still runs: a new session
    assert peer.current is not None
    assert stale not in pair.delivered_to(pair.b)


# ---------------------------------------------------------------- give-up after REKEY_ATTEMPT_TIME


def test_giving_up_keeps_the_last_initiation_answerable() -> None:
    # timers.go expiredRetransmitHandshake: after 20 initiations (~90 s + 5 s) wireguard-go
    # stops retrying and drops the staged packets, but leaves the handshake state for the
    # zero-keys timer ("residue of a partial exchange"): a late response still completes.
    pair = make_pair()
    pair.net.filter = lambda src, dst, msg: False
    pair.a_to_b(b"lost")
    pair.net.tick(130, step=0.5)
    assert initiations(pair, "a") == 20
    assert any(isinstance(e, HandshakeFailed) for e in pair.events_of(pair.a))
    peer = pair.a.peer(pair.b.public_key)
    assert peer.timers.retransmit_at is None and len(peer.staged) == 0
    last = [m for s, _, m in pair.net.sent if s == pair.a_addr][-1]
    assert last[0] == MSG_INITIATION
    pair.b.receive_datagrams([(last, pair.a_addr)], pair.clock.now)  # it arrives late
    pair.b.process_handshakes(pair.clock.now)
    response = [(d, pair.b_addr) for _, g in pair.b.datagrams_to_send() for d in g]
    pair.a.receive_datagrams(response, pair.clock.now)
    pair.a.process_handshakes(pair.clock.now)
    assert pair.a.stats().drops.get("unknown_index", 0) == 0
    assert peer.current is not None
    assert any(isinstance(e, HandshakeCompleted) for e in iter(pair.a.next_event, None))


# ---------------------------------------------------------------- persistent keepalive


def test_setting_the_same_persistent_keepalive_again_does_not_postpone_it() -> None:
    # uapi.go only swaps persistentKeepaliveInterval (plus a keepalive when it turns on);
    # the pending timer keeps its deadline and the new interval applies from the next
    # authenticated packet (timersAnyAuthenticatedPacketTraversal). So `wg syncconf` every
    # 20 s must not starve a 25 s persistent keepalive.
    pair = established()
    a, key = pair.a, pair.b.public_key
    timers = a.peer(key).timers
    a.set_persistent_keepalive(key, 25, pair.clock.now)  # on: a keepalive now
    pair.net.roundtrip()
    due = pair.clock.now + 25
    assert timers.persistent_at == due
    start = len(pair.net.sent)
    for _ in range(3):
        pair.net.tick(20)
        a.set_persistent_keepalive(key, 25, pair.clock.now)  # the same config again
    assert sent_by(pair, "a", start).count(KEEPALIVE) == 2  # at +25 and +50
    a.set_persistent_keepalive(key, 60, pair.clock.now)  # a new interval: from the next one
    assert timers.persistent_at is not None and timers.persistent_at < pair.clock.now + 25


# ---------------------------------------------------------------- transitions that already agree


def test_handshake_transitions_match_wireguard_go() -> None:
    # send.go SendHandshakeInitiation: traversal + sent, then timersHandshakeInitiated
    # (retransmit in REKEY_TIMEOUT + jitter); SendHandshakeResponse: timersSessionDerived
    # (zero keys in 540 s), traversal, sent; the response and the key confirmation:
    # timersHandshakeComplete (no retransmit, attempts and the last-minute flag reset).
    pair = make_pair(persistent_keepalive=25)
    ta = pair.a.peer(pair.b.public_key).timers
    tb = pair.b.peer(pair.a.public_key).timers
    pair.a_to_b(b"first")
    now = pair.clock.now
    assert ta.retransmit_at is not None
    assert REKEY_TIMEOUT <= ta.retransmit_at - now < REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX
    assert ta.persistent_at == now + 25  # the initiation is an authenticated traversal
    pair.net.step()  # initiation -> b
    assert tb.zero_keys_at == now + 540 and tb.retransmit_at is None
    pair.clock.advance(0.1)
    pair.net.step()  # response -> a
    assert ta.retransmit_at is None and ta.handshake_attempts == 0
    assert ta.zero_keys_at == pair.clock.now + 540
    assert ta.persistent_at == pair.clock.now + 25  # re-armed by the response and "first"
    pair.net.step()  # "first" -> b: key confirmation, data received
    assert tb.keepalive_at == pair.clock.now + KEEPALIVE_TIMEOUT
    assert tb.new_handshake_at is None


def test_keepalives_are_not_data_for_the_timers() -> None:
    # send.go: dataSent only for packets longer than a keepalive; receive.go: a keepalive
    # is an authenticated receive but not timersDataReceived. A persistent keepalive to a
    # silent peer starts no new handshake, and a received one gets no passive answer.
    pair = established()
    pair.a.set_persistent_keepalive(pair.b.public_key, 25, pair.clock.now)
    silence(pair, "b")
    start = len(pair.net.sent)
    pair.net.tick(60)
    assert sent_by(pair, "a", start) == [KEEPALIVE, KEEPALIVE, KEEPALIVE]  # 0, 25, 50 s
    assert sent_by(pair, "b", start) == []
