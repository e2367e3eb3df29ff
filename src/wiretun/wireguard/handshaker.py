"""The handshake side of a Device: one owner for everything that decides a handshake.

A `Handshaker` holds the static identity, the cookie checker, the per-source rate limiter,
the load signals, the receiver-index table (sessions and pending initiations), the queue of
received handshake messages and the pacer of our own initiations. It consumes handshake and
cookie messages, answers them, starts and retransmits our initiations and installs the
sessions they yield; the Device keeps configuration, routing and the two transport loops
and calls in here. What it produces goes to the outputs it was handed: datagrams to the
`Outbox`, events to the event queue, drops to `Drops` (by `DropReason`).

Per peer it writes the handshake fields of `Peer` (handshake, handshake_sent_at,
last_timestamp, last_initiation_at, cookie, last_handshake, the keypair slots through the
index table) and tells the peer's timers what happened; nothing else writes them.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable, Mapping
from typing import Final

from wiretun.wireguard.cookie import CookieChecker, RateLimiter, source_bytes
from wiretun.wireguard.errors import WireGuardError
from wiretun.wireguard.events import Endpoint, Event, HandshakeCompleted
from wiretun.wireguard.handshake import (
    InitiatorHandshake,
    SessionKeys,
    StaticIdentity,
    UnknownStaticKeyError,
    consume_initiation,
)
from wiretun.wireguard.index import IndexTable
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
from wiretun.wireguard.outbox import Outbox
from wiretun.wireguard.pacing import HandshakeQueue, InitiationPacer
from wiretun.wireguard.peer import Peer
from wiretun.wireguard.session import Buffer, Keypair
from wiretun.wireguard.stats import DropReason, Drops
from wiretun.wireguard.timers import HANDSHAKE_INITIATION_RATE, REKEY_TIMEOUT

__all__ = ["UNDER_LOAD_HANDSHAKES", "UNDER_LOAD_HOLD", "Handshaker"]

# More handshake messages with a valid mac1 than this within one second put the Device
# under load as well (besides the queue's backlog): a steady flood that never backs up.
UNDER_LOAD_HANDSHAKES: Final = 128
UNDER_LOAD_HOLD: Final = 1.0

# Source addresses whose packed form is kept (ipaddress costs ~1.5 us a parse; a flood from
# one host, or a few, then parses nothing). Past this many the cache starts over.
_PACKED_CACHE_SIZE: Final = 4096

# The first 4 bytes (type, 3 reserved zero bytes) of each well-formed handshake or cookie
# message, by its size: the one test that a queued message passes.
_HEADER_OF_SIZE: Final = {
    INITIATION_SIZE: MSG_INITIATION.to_bytes(4, "little"),
    RESPONSE_SIZE: MSG_RESPONSE.to_bytes(4, "little"),
    COOKIE_REPLY_SIZE: MSG_COOKIE_REPLY.to_bytes(4, "little"),
}
_EXPECTED_SIZE: Final = {
    MSG_INITIATION: INITIATION_SIZE,
    MSG_RESPONSE: RESPONSE_SIZE,
    MSG_COOKIE_REPLY: COOKIE_REPLY_SIZE,
    MSG_TRANSPORT: TRANSPORT_MIN_SIZE,
}


class Handshaker:
    """Identity, cookies, load, indices and initiations of one Device (see the module)."""

    __slots__ = (
        "_checker",
        "_drops",
        "_events",
        "_identity",
        "_index",
        "_limiter",
        "_load_count",
        "_load_window",
        "_outbox",
        "_pacer",
        "_packed",
        "_peers",
        "_queue",
        "_rng",
        "_static_static",
        "completed",
        "forced_load",
        "wall_clock_offset",
    )

    def __init__(
        self,
        identity: StaticIdentity,
        *,
        peers: Mapping[bytes, Peer],
        outbox: Outbox,
        events: deque[Event],
        drops: Drops,
        rng: Callable[[int], bytes],
        wall_clock_offset: float = 0.0,
    ) -> None:
        self._identity = identity
        self._rng = rng
        self._checker = CookieChecker(identity.public, rng)
        self._limiter = RateLimiter()
        self._index = IndexTable(rng)
        # Received handshake messages wait here for `process` (bounded, 1024).
        self._queue = HandshakeQueue()
        # Our initiations, over all peers, at a bounded rate (the rest wait their turn).
        self._pacer: InitiationPacer[Peer] = InitiationPacer()
        self._peers = peers
        # DH(our static, peer static) by peer key: the same for every handshake with that
        # peer (wireguard-go's precomputedStaticStatic). Filled at a peer's first handshake
        # rather than when it is added, so that 10k peers cost `up` or a key change nothing.
        self._static_static: dict[bytes, bytes] = {}
        self._outbox = outbox
        self._events = events
        self._drops = drops
        self._packed: dict[str, bytes] = {}  # source host -> packed address
        self._load_window = float("-inf")
        self._load_count = 0
        self.forced_load = False  # the shell may force "under load"
        self.completed = 0  # handshakes completed
        # Handshake timestamps are `now + wall_clock_offset` (TAI64N wants wall time).
        self.wall_clock_offset = wall_clock_offset

    # ---------------------------------------------------------------- identity, state

    @property
    def identity(self) -> StaticIdentity:
        return self._identity

    @property
    def sessions(self) -> Mapping[int, tuple[Keypair, Peer]]:
        """Receiver index -> (keypair, peer) of every session: the transport loops' lookup."""
        return self._index.keypairs

    @property
    def waiting(self) -> int:
        """Received handshake and cookie messages waiting for `process`."""
        return len(self._queue)

    @property
    def initiations_waiting(self) -> int:
        """Peers whose initiation waits for the pacer."""
        return len(self._pacer)

    def next_initiation_due(self) -> float | None:
        """When the first paced initiation may be created (None if none waits)."""
        return self._pacer.next_due()

    def change_identity(self, identity: StaticIdentity) -> None:
        """Use `identity` from now on (the Device then expires what the old one made)."""
        self._identity = identity
        self._checker = CookieChecker(identity.public, self._rng)
        self._static_static.clear()

    def static_static(self, remote_static: bytes) -> bytes | None:
        """DH(our static, `remote_static`) if that key is a peer's (computed at the first
        ask, then kept), else None; CryptoError for a low-order key."""
        ss = self._static_static.get(remote_static)
        if ss is None:
            if remote_static not in self._peers:
                return None
            ss = self._static_static[remote_static] = self._identity.static_static(remote_static)
        return ss

    def expire_current_keypairs(self, peer: Peer) -> None:
        """wireguard-go's ExpireCurrentKeypairs, after an identity change: the pending
        handshake goes, the sessions may only receive, and the handshake rate limit is
        reset so that the next packet starts a handshake under the new key at once."""
        self._forget_pending(peer)
        peer.handshake_sent_at = float("-inf")
        for kp in (peer.current, peer.next):
            if kp is not None:
                kp.stop_sending()

    def forget(self, peer: Peer) -> None:
        """`peer` is being removed: its sessions, pending handshake, paced turn and
        precomputed DH go."""
        self.zero(peer)
        self._pacer.discard(peer)
        self._static_static.pop(peer.public_key, None)

    def zero(self, peer: Peer) -> None:
        """Forget all of `peer`'s key material (sessions and pending handshake)."""
        self._index.forget_sessions(peer)
        self._forget_pending(peer)

    def is_under_load(self, now: float) -> bool:
        """Forced by the shell, or busy with handshakes in the last second (a backlog of
        128 in the handshake queue, or more than 128 handshake messages in one second)."""
        return self.forced_load or self._queue.under_load(now)

    # ---------------------------------------------------------------- inbound

    def accept(self, datagram: Buffer, src: Endpoint) -> None:
        """A datagram that is not a transport message: the cheap checks (type, size) at
        once; one that passes waits (copied) for `process`, or is dropped if 1024 wait.

        No crypto here, as in wireguard-go: mac1 is checked when the message is processed,
        so a flood that overflows the queue costs a size look-up and a 4-byte compare each."""
        n = len(datagram)
        header = datagram[:4]
        if header == _HEADER_OF_SIZE.get(n):
            queue = self._queue
            if queue.full:
                self._drops.add(DropReason.HANDSHAKE_QUEUE_FULL)
            else:
                queue.push(bytes(datagram), (src[0], src[1]))
            return
        drops = self._drops
        if n < 4:
            drops.add(DropReason.BAD_SIZE)
            return
        kind = int.from_bytes(datagram[:4], "little")
        expected = _EXPECTED_SIZE.get(kind)
        if expected is None:
            drops.add(DropReason.BAD_TYPE)
            return
        # The header was right for none of the sizes: a transport message under 32 bytes,
        # or a handshake type at another type's size.
        drops.add(DropReason.BAD_SIZE)

    def process(self, now: float, limit: int | None = None) -> tuple[int, dict[Peer, Endpoint]]:
        """Handle up to `limit` (None: all) queued messages, oldest first. Returns how many
        still wait, and the peers a message authenticated with the newest source of each
        (the Device does their per-batch bookkeeping)."""
        queue = self._queue
        count = len(queue) if limit is None else min(limit, len(queue))
        seen: dict[Peer, Endpoint] = {}
        for _ in range(max(0, count)):
            data, src = queue.pop()
            self._process_one(data, src, now, seen)
        return len(queue), seen

    def _process_one(
        self, data: bytes, src: Endpoint, now: float, seen: dict[Peer, Endpoint]
    ) -> None:
        drops = self._drops
        kind = data[0]
        if kind == MSG_COOKIE_REPLY:
            self._receive_cookie_reply(data, now)
            return
        checker = self._checker
        if not checker.check_mac1(data):
            drops.add(DropReason.MAC1)
            return
        self._note_load(now)
        if self.is_under_load(now):
            ip = self._packed_ip(src[0])
            if ip is None:
                drops.add(DropReason.BAD_ENDPOINT)
                return
            source = source_bytes(ip, src[1])
            if not checker.check_mac2(data, source, now):
                sender = int.from_bytes(data[4:8], "little")
                self._outbox.put(src, checker.create_reply(data, sender, source, now))
                drops.add(DropReason.COOKIE_SENT)
                return
            if not self._limiter.allow(ip, now):
                drops.add(DropReason.RATE_LIMITED)
                return
        if kind == MSG_INITIATION:
            self._receive_initiation(data, src, now, seen)
        else:
            self._receive_response(data, src, now, seen)

    def _packed_ip(self, host: str) -> bytes | None:
        packed = self._packed.get(host)
        if packed is None:
            try:
                packed = ipaddress.ip_address(host).packed
            except ValueError:
                return None
            if len(self._packed) >= _PACKED_CACHE_SIZE:
                self._packed.clear()
            self._packed[host] = packed
        return packed

    def _note_load(self, now: float) -> None:
        if now - self._load_window >= 1.0:
            self._load_window = now
            self._load_count = 0
        self._load_count += 1
        if self._load_count > UNDER_LOAD_HANDSHAKES:
            self._queue.hold_load(now)

    def _receive_cookie_reply(self, data: bytes, now: float) -> None:
        reply = CookieReply.unpack(data)
        peer = self._index.pending.get(reply.receiver)
        if peer is None:
            entry = self._index.keypairs.get(reply.receiver)
            if entry is None:
                self._drops.add(DropReason.UNKNOWN_INDEX)
                return
            peer = entry[1]
        if not peer.cookie.consume_reply(reply, now):
            self._drops.add(DropReason.COOKIE_INVALID)

    def _receive_initiation(
        self, data: bytes, src: Endpoint, now: float, seen: dict[Peer, Endpoint]
    ) -> None:
        drops = self._drops
        try:
            hs = consume_initiation(
                self._identity, Initiation.unpack(data), static_static=self.static_static
            )
        except UnknownStaticKeyError:
            drops.add(DropReason.UNKNOWN_PEER)
            return
        except WireGuardError:
            drops.add(DropReason.HANDSHAKE_FAILED)
            return
        peer = self._peers.get(hs.remote_static)
        if peer is None:  # static_static knew it: only if `_peers` changed meanwhile
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
        self._forget_pending(peer)
        index = self._index.new_index()
        try:
            message, keys = hs.create_response(peer.preshared_key, index, rng=self._rng)
        except WireGuardError:
            drops.add(DropReason.HANDSHAKE_FAILED)
            return
        self._install_keypair(peer, keys, now, src, seen)
        timers = peer.timers
        timers.authenticated_traversal(now)
        timers.authenticated_sent(now)
        message = peer.cookie.add_macs(message, now)
        # A response counts as a sent handshake: no own initiation for REKEY_TIMEOUT.
        peer.handshake_sent_at = now
        peer.rx_bytes += len(data)
        peer.tx_bytes += len(message)
        self._outbox.put((src[0], src[1]), message)

    def _receive_response(
        self, data: bytes, src: Endpoint, now: float, seen: dict[Peer, Endpoint]
    ) -> None:
        response = Response.unpack(data)
        pending = self._index.pending
        peer = pending.get(response.receiver)
        hs = None if peer is None else peer.handshake
        if peer is None or hs is None:
            self._drops.add(DropReason.UNKNOWN_INDEX)
            return
        try:
            keys = hs.consume_response(response)
        except WireGuardError:
            self._drops.add(DropReason.HANDSHAKE_FAILED)
            return
        del pending[response.receiver]
        peer.handshake = None
        peer.rx_bytes += len(data)
        kp = self._install_keypair(peer, keys, now, src, seen)
        self._complete(peer, kp, now)
        # The responder waits for proof that we have the keys: send data, or a keepalive. The
        # Device sends them once the batch is accounted for (`Device._after_receive`), as
        # wireguard-go clears newHandshake before SendKeepalive, so that the data arms it anew.
        peer.want_keepalive()

    def _install_keypair(
        self,
        peer: Peer,
        keys: SessionKeys,
        now: float,
        src: Endpoint,
        seen: dict[Peer, Endpoint],
    ) -> Keypair:
        """The new session of a completed handshake, in the index table, with the source
        authenticated and the session timers started; the same on both sides."""
        kp = Keypair(
            keys.send_key,
            keys.recv_key,
            keys.local_index,
            keys.remote_index,
            is_initiator=keys.is_initiator,
            created=now,
        )
        self._index.install(peer, kp)
        self._note_authenticated(peer, src, seen)
        peer.timers.session_derived(now)
        return kp

    def _note_authenticated(self, peer: Peer, src: Endpoint, seen: dict[Peer, Endpoint]) -> None:
        # Handshake messages also move the endpoint; the newest datagram of the batch wins.
        moved = peer.roam_to(src)
        if moved is not None:
            self._events.append(moved)
        seen[peer] = (src[0], src[1])

    def confirm(self, peer: Peer, kp: Keypair, now: float) -> None:
        """A transport message authenticated under `kp`, the responder's parked keypair:
        the peer has the keys, so it becomes current and the handshake is complete."""
        dead = peer.confirm(kp)
        if dead is not None:
            self._index.drop_keypair(dead)
        self._complete(peer, kp, now)

    def _complete(self, peer: Peer, kp: Keypair, now: float) -> None:
        peer.timers.handshake_complete(now)
        peer.sent_last_minute_handshake = False
        peer.last_handshake = now + self.wall_clock_offset
        self.completed += 1
        self._events.append(HandshakeCompleted(peer.public_key, kp.is_initiator, peer.endpoint))

    # ---------------------------------------------------------------- outbound

    def initiate(self, peer: Peer, now: float, *, retry: bool) -> None:
        """Start a handshake with `peer` unless one went out less than REKEY_TIMEOUT ago;
        when the pacer has no token the peer waits its turn (`release`)."""
        if peer.endpoint is None:
            self._drops.add(DropReason.NO_ENDPOINT)
            return
        if not retry:
            peer.timers.handshake_attempts = 0
        if now - peer.handshake_sent_at < REKEY_TIMEOUT:
            return
        if self._pacer.admit(peer, now):
            self._create_initiation(peer, now)

    def release(self, now: float) -> None:
        """Create the initiations that waited for the pacer, first come first, while tokens
        last. A peer that no longer needs one (it has no endpoint any more, or a handshake
        went out meanwhile) leaves the queue without spending a token."""
        pacer = self._pacer
        while (peer := pacer.first_waiting()) is not None:
            if peer.endpoint is None or now - peer.handshake_sent_at < REKEY_TIMEOUT:
                pacer.discard(peer)
                continue
            if not pacer.take_for_first(now):
                return
            self._create_initiation(peer, now)

    def _create_initiation(self, peer: Peer, now: float) -> None:
        endpoint = peer.endpoint
        assert endpoint is not None
        timers = peer.timers
        self._forget_pending(peer)
        index = self._index.new_index()
        try:
            hs = InitiatorHandshake.create(
                self._identity,
                peer.public_key,
                peer.preshared_key,
                index,
                max(0.0, now + self.wall_clock_offset),
                rng=self._rng,
                static_static=self.static_static(peer.public_key),
            )
        except WireGuardError:
            self._drops.add(DropReason.HANDSHAKE_FAILED)
            return
        peer.handshake_sent_at = now
        peer.handshake = hs
        self._index.pending[index] = peer
        timers.authenticated_traversal(now)
        timers.authenticated_sent(now)
        message = peer.cookie.add_macs(hs.message, now)
        peer.tx_bytes += len(message)
        # Withdrawable while it waits: a newer initiation for the peer replaces it.
        self._outbox.put(endpoint, message, key=peer)
        timers.handshake_initiated(now)

    def _forget_pending(self, peer: Peer) -> None:
        withdrawn = self._outbox.withdraw(peer)
        if withdrawn is not None:
            peer.tx_bytes -= len(withdrawn)
        self._index.forget_pending(peer)
