"""Handshake and cookie messages for a Device: consume them, answer them, start our own.

Free functions of the Device (not methods) so that device.py keeps the configuration, the
outputs and the transport fast paths, and this module the handshake side of the protocol:
mac1/mac2 and load checks, initiation and response, cookie replies, session installation.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Final

from wiretun.wireguard.cookie import source_bytes
from wiretun.wireguard.errors import WireGuardError
from wiretun.wireguard.events import Endpoint, HandshakeCompleted
from wiretun.wireguard.handshake import InitiatorHandshake, consume_initiation
from wiretun.wireguard.messages import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    MSG_COOKIE_REPLY,
    MSG_INITIATION,
    MSG_RESPONSE,
    MSG_TRANSPORT,
    RESPONSE_SIZE,
    TRANSPORT_MIN_SIZE,
    CookieReply,
    Initiation,
    Response,
)
from wiretun.wireguard.peer import Peer
from wiretun.wireguard.session import Keypair
from wiretun.wireguard.stats import DropReason
from wiretun.wireguard.timers import HANDSHAKE_INITIATION_RATE, REKEY_TIMEOUT

if TYPE_CHECKING:
    from wiretun.wireguard.device import Device
    from wiretun.wireguard.session import Buffer

# More handshake messages with a valid mac1 than this within one second put the Device
# under load as well (besides the queue's backlog): a steady flood that never backs up.
UNDER_LOAD_HANDSHAKES: Final = 128
UNDER_LOAD_HOLD: Final = 1.0


class Seen:
    """What one receive batch saw from a peer: newest source, last keypair, any data."""

    __slots__ = ("data", "keypair", "src")

    def __init__(self, src: Endpoint, keypair: Keypair | None) -> None:
        self.src = src
        self.keypair = keypair
        self.data = False


def _note_handshake_load(dev: Device, now: float) -> None:
    if now - dev._load_window >= 1.0:
        dev._load_window = now
        dev._load_count = 0
    dev._load_count += 1
    if dev._load_count > UNDER_LOAD_HANDSHAKES:
        dev._handshakes.hold_load(now)


_EXPECTED_SIZE: Final = {
    MSG_INITIATION: INITIATION_SIZE,
    MSG_RESPONSE: RESPONSE_SIZE,
    MSG_COOKIE_REPLY: COOKIE_REPLY_SIZE,
    MSG_TRANSPORT: TRANSPORT_MIN_SIZE,
}


def queue_control(dev: Device, datagram: Buffer, src: Endpoint) -> None:
    """The cheap checks (type, size) at once; a message that passes waits (copied) in the
    handshake queue for `process_control`, or is dropped if the queue is full."""
    drops = dev._drops
    n = len(datagram)
    if n < 4:
        drops.add(DropReason.BAD_SIZE)
        return
    kind = int.from_bytes(datagram[:4], "little")
    expected = _EXPECTED_SIZE.get(kind)
    if expected is None:
        drops.add(DropReason.BAD_TYPE)
        return
    if n != expected or kind == MSG_TRANSPORT:  # transport messages get here when < 32
        drops.add(DropReason.BAD_SIZE)
        return
    if not dev._handshakes.push(bytes(datagram), (src[0], src[1])):
        drops.add(DropReason.HANDSHAKE_QUEUE_FULL)


def process_control(
    dev: Device, data: bytes, src: Endpoint, now: float, seen: dict[Peer, Seen]
) -> None:
    """One queued handshake or cookie message (its type and size are known good)."""
    drops = dev._drops
    kind = data[0]
    if kind == MSG_COOKIE_REPLY:
        _receive_cookie_reply(dev, data, now)
        return
    if not dev._checker.check_mac1(data):
        drops.add(DropReason.MAC1)
        return
    _note_handshake_load(dev, now)
    if dev.is_under_load(now):
        try:
            ip = ipaddress.ip_address(src[0]).packed
        except ValueError:
            drops.add(DropReason.BAD_ENDPOINT)
            return
        if not dev._checker.check_mac2(data, source_bytes(ip, src[1]), now):
            sender = int.from_bytes(data[4:8], "little")
            reply = dev._checker.create_reply(data, sender, source_bytes(ip, src[1]), now)
            dev._queue((src[0], src[1]), reply)
            drops.add(DropReason.COOKIE_SENT)
            return
        if not dev._limiter.allow(ip, now):
            drops.add(DropReason.RATE_LIMITED)
            return
    if kind == MSG_INITIATION:
        _receive_initiation(dev, data, src, now, seen)
    else:
        _receive_response(dev, data, src, now, seen)


def _receive_cookie_reply(dev: Device, data: bytes, now: float) -> None:
    reply = CookieReply.unpack(data)
    peer = dev._index.pending.get(reply.receiver)
    if peer is None:
        entry = dev._index.keypairs.get(reply.receiver)
        if entry is None:
            dev._drops.add(DropReason.UNKNOWN_INDEX)
            return
        peer = entry[1]
    if not peer.cookie.consume_reply(reply, now):
        dev._drops.add(DropReason.COOKIE_INVALID)


def _receive_initiation(
    dev: Device, data: bytes, src: Endpoint, now: float, seen: dict[Peer, Seen]
) -> None:
    drops = dev._drops
    try:
        hs = consume_initiation(dev._identity, Initiation.unpack(data))
    except WireGuardError:
        drops.add(DropReason.HANDSHAKE_FAILED)
        return
    peer = dev._peers.get(hs.remote_static)
    if peer is None:
        drops.add(DropReason.UNKNOWN_PEER)
        return
    if hs.timestamp <= peer.last_timestamp:
        drops.add(DropReason.HANDSHAKE_REPLAY)
        return
    if now - peer.last_initiation_at < HANDSHAKE_INITIATION_RATE:
        drops.add(DropReason.HANDSHAKE_FLOOD)
        return
    peer.last_timestamp = hs.timestamp
    peer.last_initiation_at = now
    # Our own initiation (if any) is abandoned, as in wireguard-go: one handshake state.
    dev._forget_pending(peer)
    index = dev._index.new_index()
    try:
        message, keys = hs.create_response(peer.preshared_key, index, rng=dev._rng)
    except WireGuardError:
        drops.add(DropReason.HANDSHAKE_FAILED)
        return
    kp = Keypair(
        keys.send_key,
        keys.recv_key,
        keys.local_index,
        keys.remote_index,
        is_initiator=False,
        created=now,
    )
    dev._index.install(peer, kp)
    _note_authenticated(dev, peer, src, seen)
    timers = peer.timers
    timers.session_derived(now)
    timers.authenticated_traversal(now)
    timers.authenticated_sent(now)
    message = peer.cookie.add_macs(message, now)
    # A response counts as a sent handshake: no own initiation for REKEY_TIMEOUT.
    peer.handshake_sent_at = now
    peer.rx_bytes += len(data)
    peer.tx_bytes += len(message)
    dev._queue((src[0], src[1]), message)


def _receive_response(
    dev: Device, data: bytes, src: Endpoint, now: float, seen: dict[Peer, Seen]
) -> None:
    response = Response.unpack(data)
    peer = dev._index.pending.get(response.receiver)
    hs = None if peer is None else peer.handshake
    if peer is None or hs is None:
        dev._drops.add(DropReason.UNKNOWN_INDEX)
        return
    try:
        keys = hs.consume_response(response)
    except WireGuardError:
        dev._drops.add(DropReason.HANDSHAKE_FAILED)
        return
    del dev._index.pending[response.receiver]
    peer.handshake = None
    peer.rx_bytes += len(data)
    kp = Keypair(
        keys.send_key,
        keys.recv_key,
        keys.local_index,
        keys.remote_index,
        is_initiator=True,
        created=now,
    )
    dev._index.install(peer, kp)
    _note_authenticated(dev, peer, src, seen)
    peer.timers.session_derived(now)
    handshake_complete(dev, peer, kp, now)
    # The responder waits for proof that we have the keys: send data, or a keepalive. The
    # Device sends them once the batch is accounted for (`Device._after_receive`), as
    # wireguard-go clears newHandshake before SendKeepalive, so that the data arms it anew.
    if not peer.staged:
        peer.staged.append(b"")


def _note_authenticated(dev: Device, peer: Peer, src: Endpoint, seen: dict[Peer, Seen]) -> None:
    # Handshake messages also move the endpoint; the newest datagram of the batch wins.
    dev._set_endpoint_from(peer, src)
    state = seen.get(peer)
    if state is None:
        seen[peer] = Seen(src, None)
    else:
        state.src = src


def handshake_complete(dev: Device, peer: Peer, kp: Keypair, now: float) -> None:
    peer.timers.handshake_complete(now)
    peer.sent_last_minute_handshake = False
    peer.last_handshake = now + dev.wall_clock_offset
    dev._completed += 1
    dev._events.append(HandshakeCompleted(peer.public_key, kp.is_initiator, peer.endpoint))


def send_initiation(dev: Device, peer: Peer, now: float, *, retry: bool) -> None:
    """Start a handshake with `peer` unless one went out less than REKEY_TIMEOUT ago; when
    the pacer has no token the peer waits its turn (`release_initiations`)."""
    if peer.endpoint is None:
        dev._drops.add(DropReason.NO_ENDPOINT)
        return
    if not retry:
        peer.timers.handshake_attempts = 0
    if now - peer.handshake_sent_at < REKEY_TIMEOUT:
        return
    if dev._pacer.admit(peer, now):
        _create_initiation(dev, peer, now)


def release_initiations(dev: Device, now: float) -> None:
    """Create the initiations that waited for the pacer, first come first, while tokens
    last. A peer that no longer needs one (it has no endpoint any more, or a handshake went
    out meanwhile) leaves the queue without spending a token."""
    pacer = dev._pacer
    while (peer := pacer.first_waiting()) is not None:
        if peer.endpoint is None or now - peer.handshake_sent_at < REKEY_TIMEOUT:
            pacer.discard(peer)
            continue
        if not pacer.take_for_first(now):
            return
        _create_initiation(dev, peer, now)


def _create_initiation(dev: Device, peer: Peer, now: float) -> None:
    assert peer.endpoint is not None
    timers = peer.timers
    dev._forget_pending(peer)
    index = dev._index.new_index()
    try:
        hs = InitiatorHandshake.create(
            dev._identity,
            peer.public_key,
            peer.preshared_key,
            index,
            max(0.0, now + dev.wall_clock_offset),
            rng=dev._rng,
        )
    except WireGuardError:
        dev._drops.add(DropReason.HANDSHAKE_FAILED)
        return
    peer.handshake_sent_at = now
    peer.handshake = hs
    dev._index.pending[index] = peer
    timers.authenticated_traversal(now)
    timers.authenticated_sent(now)
    message = peer.cookie.add_macs(hs.message, now)
    peer.tx_bytes += len(message)
    dev._queue(peer.endpoint, message)
    dev._unsent_initiations[peer] = (peer.endpoint, message)
    timers.handshake_initiated(now)
