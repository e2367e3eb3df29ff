"""The WireGuard Device: peers, sessions, routing and timers as a sans-I/O state machine.

The shell (wiretun.tunnel) drives it with four inputs and drains four outputs; the Device
never reads a clock, touches a socket or starts a thread. ``now`` is monotonic seconds
(``loop.time()``); handshake timestamps use ``now + wall_clock_offset`` as wall time.
The Device keeps the configuration, the routing and the two transport loops; the handshake
side (identity, cookies, load, indices, initiations) is its `Handshaker`.

Inputs::

    packets = device.receive_datagrams([(datagram, (host, port)), ...], now)
        # -> inner IP packets to write to the TUN (authenticated, replay-checked, source
        #    checked against the peer's allowed-ips, trimmed to the IP length). Handshake
        #    and cookie messages only wait in a bounded queue here (1024) ...
    device.process_handshakes(now, limit)
        # ... until this handles `limit` of them (None: all) and queues their answers;
        # returns how many still wait (also `device.handshakes_waiting`).
    device.send_packets([ip_packet, ...], now)
        # routes each packet by destination (longest prefix), pads it to 16 (never past
        # `mtu`) and seals it; packets for a peer without a session are staged (last 128)
        # and a handshake is started (paced over all peers: bursts of 8, then 1000/s).
    device.handle_timers(now)   # call at (or after) device.next_timer()

Outputs::

    device.datagrams_to_send()  # [((host, port), [datagram, ...]), ...] grouped per
                                # endpoint, in order: one UDP GSO send per group
    device.next_timer()         # when handle_timers is next due, or None
    device.next_event()         # HandshakeCompleted, PeerEndpointChanged, ... or None
    device.stats()              # DeviceStats: drops by reason, per-peer counters

Configuration (the UAPI ``set=1`` verbs): ``add_peer``, ``remove_peer``, ``remove_all_peers``,
``set_private_key``, ``set_preshared_key``, ``set_endpoint``, ``set_persistent_keepalive``,
``replace_allowed_ips``, ``add_allowed_ips``, ``remove_allowed_ips``; ``listen_port``,
``fwmark``, ``mtu`` are plain attributes. Misuse raises ValueError/KeyError; garbage from the
network is only counted in ``stats().drops``.

Load: handshake messages need a valid mac1 always; while ``under_load`` they also need a
valid mac2 (otherwise a cookie reply is sent) and pass a per-source-IP rate limiter. The
shell may force ``device.under_load = True``; otherwise the Device is under load for one
second after 128 handshake messages waited in its queue (wireguard-go's "handshake queue
1/8 full") or more than 128 arrived within one second.
"""

from __future__ import annotations

import secrets
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Final

from wiretun.wireguard.allowedips import AllowedIPs, IPNetwork, parse_network
from wiretun.wireguard.events import (
    Endpoint,
    Event,
    HandshakeFailed,
    KeypairExpired,
    KeysZeroed,
)
from wiretun.wireguard.handshake import StaticIdentity
from wiretun.wireguard.handshaker import UNDER_LOAD_HANDSHAKES, UNDER_LOAD_HOLD, Handshaker
from wiretun.wireguard.keys import key_to_base64
from wiretun.wireguard.messages import MSG_TRANSPORT, TRANSPORT_MIN_SIZE
from wiretun.wireguard.outbox import Outbox
from wiretun.wireguard.peer import Peer, check_endpoint, check_keepalive, check_key
from wiretun.wireguard.replay import REJECT_AFTER_MESSAGES
from wiretun.wireguard.session import TRANSPORT_HEADER, Buffer, Keypair
from wiretun.wireguard.stats import DROP_REASONS, DeviceStats, DropReason, Drops, PeerStats
from wiretun.wireguard.timers import (
    REJECT_AFTER_TIME,
    TimerAction,
    TimerQueue,
    needs_rekey_on_receive,
    needs_rekey_on_send,
)

if TYPE_CHECKING:  # the shell hands the Device its data path; the core imports none
    from wiretun.datapath import Backend, CoalescerLike

__all__ = [
    "DEFAULT_MTU",
    "DROP_REASONS",
    "UNDER_LOAD_HANDSHAKES",
    "UNDER_LOAD_HOLD",
    "Buffer",
    "Device",
    "DeviceStats",
    "DropReason",
    "PeerStats",
]

DEFAULT_MTU: Final = 1420

_HEADER = TRANSPORT_HEADER
_VNET = 10  # virtio_net_hdr before each TUN frame when offloads are on
# The most bytes one UDP_SEGMENT send may carry, by family (the IP datagram limit).
_GSO_MAX_BYTES_V4 = 65535 - 20 - 8
_GSO_MAX_BYTES_V6 = 65535 - 8
# A frame becomes at most this many segments (wiretun.tun.gso.MAX_SEGMENTS).
_MAX_FRAME_SEGMENTS = 256
Gso = tuple[Endpoint, bytes, list[tuple[int, int]]]
"""One batch of sealed messages for an endpoint: the buffer and its (segment size, bytes)
UDP_SEGMENT groups, in order."""


class Seen:
    """What one receive batch saw from a peer: newest source, last keypair, any data."""

    __slots__ = ("data", "keypair", "src")

    def __init__(self, src: Endpoint, keypair: Keypair | None) -> None:
        self.src = src
        self.keypair = keypair
        self.data = False


class Device:
    """A WireGuard interface's protocol state: one static identity and its peers."""

    def __init__(
        self,
        private_key: bytes,
        *,
        listen_port: int | None = None,
        fwmark: int | None = None,
        rng: Callable[[int], bytes] = secrets.token_bytes,
        wall_clock_offset: float = 0.0,
        mtu: int = DEFAULT_MTU,
        datapath: Backend | None = None,
    ) -> None:
        self.listen_port = listen_port
        self.fwmark = fwmark
        self.mtu = mtu
        self._rng = rng
        self._peers: dict[bytes, Peer] = {}
        self._allowed: AllowedIPs[Peer] = AllowedIPs()
        self._timers: TimerQueue[Peer] = TimerQueue()  # every peer's timers, by deadline
        # The outputs, shared with the handshaker: datagrams per endpoint, events, drops.
        self._outbox = Outbox()
        self._gso_out: list[Gso] = []
        self._events: deque[Event] = deque()
        self._drops = Drops()
        self._frame_drops: Counter[str] = Counter()  # TUN frames send_frames could not split
        # Identity, cookies, load, receiver indices, queued handshakes, paced initiations.
        self._handshaker = Handshaker(
            StaticIdentity.from_private(check_key("private key", private_key)),
            peers=self._peers,
            outbox=self._outbox,
            events=self._events,
            drops=self._drops,
            rng=rng,
            wall_clock_offset=wall_clock_offset,
        )
        # The batch data path (wiretun.datapath.load()): only send_frames/receive_gro use it.
        self._datapath = datapath
        self._sealed = 0
        self._opened = 0

    # ---------------------------------------------------------------- configuration

    @property
    def public_key(self) -> bytes:
        return self._handshaker.identity.public

    @property
    def private_key(self) -> bytes:
        return self._handshaker.identity.private

    @property
    def wall_clock_offset(self) -> float:
        """Seconds to add to `now` for wall time (handshake timestamps, last_handshake)."""
        return self._handshaker.wall_clock_offset

    @wall_clock_offset.setter
    def wall_clock_offset(self, value: float) -> None:
        self._handshaker.wall_clock_offset = value

    @property
    def peers(self) -> list[Peer]:
        return list(self._peers.values())

    def peer(self, public_key: bytes) -> Peer:
        try:
            return self._peers[public_key]
        except KeyError:
            raise KeyError(f"no peer with public key {key_to_base64(public_key)}") from None

    def set_private_key(self, private_key: bytes) -> None:
        """Change identity; a peer whose public key is our new one is removed, as wg does.

        As wireguard-go's ExpireCurrentKeypairs: pending handshakes are dropped, sessions
        may only receive from now on (packets in flight still arrive), and the handshake
        rate limit is reset so the next packet starts a handshake under the new key at once.
        """
        identity = StaticIdentity.from_private(check_key("private key", private_key))
        handshaker = self._handshaker
        if identity.public == handshaker.identity.public:
            return
        handshaker.change_identity(identity)
        if identity.public in self._peers:
            self.remove_peer(identity.public)
        for peer in self._peers.values():
            handshaker.expire_current_keypairs(peer)

    def add_peer(
        self,
        public_key: bytes,
        *,
        preshared_key: bytes | None = None,
        endpoint: Endpoint | None = None,
        allowed_ips: Iterable[str | IPNetwork] = (),
        persistent_keepalive: int | None = None,
    ) -> Peer:
        """Add a peer (ValueError if it exists or is ourselves)."""
        public_key = check_key("public key", public_key)
        if public_key in self._peers:
            raise ValueError(f"peer {key_to_base64(public_key)} already exists")
        if public_key == self._handshaker.identity.public:
            raise ValueError("a peer cannot have the device's own public key")
        nets = [parse_network(n) for n in allowed_ips]
        peer = Peer(
            public_key,
            self._allowed,
            self._rng,
            preshared_key=preshared_key,
            endpoint=endpoint,
            persistent_keepalive=persistent_keepalive,
        )
        self._peers[public_key] = peer
        self._timers.add(peer.timers, peer)
        self._allowed.update(nets, peer)
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.peer(public_key)
        self._handshaker.forget(peer)
        self._drop_staged(peer, DropReason.PEER_REMOVED)
        peer.timers.stop_all()
        self._timers.discard(peer.timers)
        self._allowed.remove_value(peer)
        del self._peers[public_key]

    def remove_all_peers(self) -> None:
        for key in list(self._peers):
            self.remove_peer(key)

    def set_preshared_key(self, public_key: bytes, preshared_key: bytes | None) -> None:
        self.peer(public_key).preshared_key = (
            None if preshared_key is None else check_key("psk", preshared_key)
        )

    def set_endpoint(self, public_key: bytes, endpoint: Endpoint | None) -> None:
        self.peer(public_key).endpoint = check_endpoint(endpoint)

    def set_persistent_keepalive(self, public_key: bytes, interval: int | None, now: float) -> None:
        """Set the interval (0/None: off). A keepalive goes out at once only when this turns
        it on (was off), as in wireguard-go: re-setting an interval sends nothing."""
        peer = self.peer(public_key)
        value = check_keepalive(interval)
        was_off = not peer.persistent_keepalive
        peer.timers.set_persistent_interval(value, now)
        if was_off and value:
            self._send_keepalive(peer, now)

    def replace_allowed_ips(self, public_key: bytes, networks: Iterable[str | IPNetwork]) -> None:
        peer = self.peer(public_key)
        nets = [parse_network(n) for n in networks]
        self._allowed.remove_value(peer)
        self._allowed.update(nets, peer)

    def add_allowed_ips(self, public_key: bytes, networks: Iterable[str | IPNetwork]) -> None:
        """Add prefixes; a prefix another peer holds moves to this one."""
        self._allowed.update(networks, self.peer(public_key))

    def remove_allowed_ips(self, public_key: bytes, networks: Iterable[str | IPNetwork]) -> None:
        peer = self.peer(public_key)
        for net in [parse_network(n) for n in networks]:
            self._allowed.remove(net, peer)

    @property
    def under_load(self) -> bool:
        return self._handshaker.forced_load

    @under_load.setter
    def under_load(self, value: bool) -> None:
        self._handshaker.forced_load = bool(value)

    def is_under_load(self, now: float) -> bool:
        """Forced by the shell, or busy with handshakes in the last second (a backlog of
        128 in the handshake queue, or more than 128 handshake messages in one second)."""
        return self._handshaker.is_under_load(now)

    # ---------------------------------------------------------------- outputs

    def datagrams_to_send(self) -> list[tuple[Endpoint, list[bytes]]]:
        return self._outbox.drain()

    def gso_to_send(self) -> list[Gso]:
        """What `send_frames` sealed: (endpoint, buffer, groups) per batch, in order; send it
        after `datagrams_to_send()` (which holds what was staged before it)."""
        out, self._gso_out = self._gso_out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def next_timer(self) -> float | None:
        """The earliest deadline of any peer (from a heap: cheap enough to ask per batch),
        or when the next paced initiation is due."""
        at = self._timers.next_deadline()
        paced = self._handshaker.next_initiation_due()
        if paced is None:
            return at
        return paced if at is None or paced < at else at

    @property
    def handshakes_waiting(self) -> int:
        """Received handshake and cookie messages that wait for `process_handshakes`."""
        return self._handshaker.waiting

    def stats(self, *, peers: bool = True) -> DeviceStats:
        """Counters now; `peers=False` leaves out the per-peer part (10k peers: ~17 ms)."""
        return DeviceStats(
            drops=self._drops.snapshot(),
            peers=self._peer_stats() if peers else (),
            packets_sealed=self._sealed,
            packets_opened=self._opened,
            handshakes_completed=self._handshaker.completed,
            frame_drops=dict(self._frame_drops),
            handshakes_queued=self._handshaker.waiting,
            initiations_waiting=self._handshaker.initiations_waiting,
        )

    def _peer_stats(self) -> tuple[PeerStats, ...]:
        return tuple(
            PeerStats(
                public_key=p.public_key,
                endpoint=p.endpoint,
                tx_bytes=p.tx_bytes,
                rx_bytes=p.rx_bytes,
                last_handshake=p.last_handshake,
                staged_packets=len(p.staged),
                has_session=p.current is not None,
            )
            for p in self._peers.values()
        )

    # ---------------------------------------------------------------- inbound

    def receive_datagrams(
        self, datagrams: Iterable[tuple[Buffer, Endpoint]], now: float
    ) -> list[bytes]:
        """Consume datagrams from the network; return the inner packets to deliver.

        Datagrams may be memoryviews (of a GRO receive buffer): none is kept past the call.
        """
        # Per run of datagrams with the same receiver index: one index lookup, one expiry
        # check, then the keypair's own `open_run` (per packet: replay check, one AEAD call,
        # inner checks); per-peer bookkeeping once per batch (`_after_receive`).
        batch = datagrams if isinstance(datagrams, list) else list(datagrams)
        out: list[bytes] = []
        keypairs = self._handshaker.sessions
        accept = self._handshaker.accept
        drops = self._drops
        lookup = self._allowed.lookup
        cached_owner = self._allowed.cache.get
        header = _HEADER.unpack_from
        end_run = self._end_run
        seen: dict[Peer, Seen] = {}
        opened = 0
        i = 0
        total = len(batch)
        while i < total:
            data, src = batch[i]
            if len(data) < TRANSPORT_MIN_SIZE or data[0] != MSG_TRANSPORT:
                accept(data, src)  # queued for process_handshakes
                i += 1
                continue
            kind, receiver, _ = header(data)
            if kind != MSG_TRANSPORT:
                drops.add(DropReason.BAD_TYPE)
                i += 1
                continue
            entry = keypairs.get(receiver)
            if entry is None:
                drops.add(DropReason.UNKNOWN_INDEX)
                i += 1
                continue
            kp, peer = entry
            if kp.recv is None or now - kp.created >= REJECT_AFTER_TIME:
                drops.add(DropReason.EXPIRED)
                i += 1
                continue
            unconfirmed = kp is peer.next
            i, n, rx, first, last, got_data = kp.open_run(
                batch, i, owner=peer, cached_owner=cached_owner, owner_of=lookup, out=out,
                drops=drops,
            )  # fmt: skip
            if n:
                opened += n
                if unconfirmed:
                    self._confirm(peer, kp, first, now)  # type: ignore[arg-type]
                end_run(seen, peer, kp=kp, src=last, rx=rx, data=got_data)  # type: ignore[arg-type]
        self._opened += opened
        for p, st in seen.items():
            self._after_receive(p, st.src, st.keypair, st.data, now)
        return out

    def process_handshakes(self, now: float, limit: int | None = None) -> int:
        """Handle up to `limit` (None: all) of the handshake and cookie messages that
        `receive_datagrams` / `receive_gro` queued, oldest first; returns how many still
        wait. The shell calls it with a small limit once per loop turn, so a flood of
        handshakes (each a cookie reply or a DH) takes a bounded share of each turn and
        data never waits behind it; what overflows the queue (1024) is dropped and counted
        as ``handshake_queue_full``."""
        left, seen = self._handshaker.process(now, limit)
        for peer, src in seen.items():
            self._after_receive(peer, src, None, False, now)
        return left

    @staticmethod
    def _end_run(
        seen: dict[Peer, Seen],
        peer: Peer | None,
        *,
        kp: Keypair | None,
        src: Endpoint,
        rx: int,
        data: bool,
    ) -> None:
        """Write back what one run of authenticated datagrams for `kp` did."""
        if peer is None:
            return
        peer.rx_bytes += rx
        state = seen.get(peer)
        if state is None:
            state = seen[peer] = Seen(src, kp)
        else:
            state.src = src
            state.keypair = kp
        state.data = state.data or data

    def _after_receive(
        self, peer: Peer, src: Endpoint, kp: Keypair | None, got_data: bool, now: float
    ) -> None:
        """Per-peer bookkeeping once per batch: roaming, timers, last-minute rekey, and then
        the packets that a handshake completed in this batch released.

        As in wireguard-go, what was received is accounted for before anything it causes is
        sent, so the staged data sent on a response or a key confirmation arms the "no
        answer in 15 s" timer (timersDataSent) after the receive cleared it.
        """
        self._set_endpoint_from(peer, src)
        timers = peer.timers
        timers.authenticated_received(now)
        timers.authenticated_traversal(now)
        if got_data:
            timers.data_received(now)
        if (
            kp is not None
            and kp is peer.current
            and not peer.sent_last_minute_handshake
            and needs_rekey_on_receive(kp.is_initiator, kp.created, now)
        ):
            peer.sent_last_minute_handshake = True
            self._handshaker.initiate(peer, now, retry=False)
        # Packets only wait while there is no session to send them with: staged packets and
        # a usable current keypair mean this batch completed a handshake (see `_confirm`
        # and the handshaker's response handling, which leave the sending to here).
        current = peer.current
        if peer.staged and current is not None and current.can_send(now):
            self._flush_staged(peer, now)

    def _set_endpoint_from(self, peer: Peer, src: Endpoint) -> None:
        moved = peer.roam_to(src)
        if moved is not None:
            self._events.append(moved)

    def _confirm(self, peer: Peer, kp: Keypair, src: Endpoint, now: float) -> None:
        # The confirming packet's source first (wireguard-go: SetEndpointFromPacket before
        # SendStagedPackets), so the staged packets follow a peer that roamed.
        self._set_endpoint_from(peer, src)
        self._handshaker.confirm(peer, kp, now)
        # The staged packets go out in `_after_receive`, after the batch's receive timers.

    def receive_gro(
        self,
        buffers: Iterable[tuple[Buffer, int, Endpoint]],
        now: float,
        frames: CoalescerLike,
    ) -> None:
        """Consume UDP receive buffers (GRO: datagrams of `segment` bytes, the last maybe
        shorter); the packets to deliver go to `frames` (a datapath Coalescer), whose
        `finish()` gives the TUN frames.

        Runs of transport messages for one keypair are opened by the batch data path in one
        call each; anything else (handshakes, unknown indices, expired or unconfirmed
        keypairs) goes through `receive_datagrams` one datagram at a time. Either way the
        results and the drops are those of `receive_datagrams` on the split datagrams.
        """
        keypairs = self._handshaker.sessions
        accept = self._handshaker.accept
        open_run = self._batch_path().open_run
        source_table = self._allowed.source_table
        seen: dict[Peer, Seen] = {}
        # Transport datagrams for the per-packet path, handed over together before the
        # next run and at the end, so their order stays that of the wire.
        single: list[tuple[Buffer, Endpoint]] = []
        for data, segment, src in buffers:
            size = len(data)
            pos = 0
            if not size:  # an empty datagram: counted where every datagram is
                single.append((data, src))
                continue
            while pos < size:
                if size - pos >= TRANSPORT_MIN_SIZE and data[pos] == MSG_TRANSPORT:
                    kind, receiver, _ = _HEADER.unpack_from(data, pos)
                    if single and kind == MSG_TRANSPORT and receiver in keypairs:
                        # What waits may change this keypair (a handshake, a confirmation):
                        # let it act before the run is judged.
                        self._receive_singles(single, now, frames)
                    entry = keypairs.get(receiver) if kind == MSG_TRANSPORT else None
                    if entry is not None:
                        kp, peer = entry
                        key = kp.recv_key
                        if (
                            key is not None
                            and now - kp.created < REJECT_AFTER_TIME
                            and kp is not peer.next
                        ):
                            replay = kp.replay
                            v4, v6 = source_table(peer)
                            end, nxt, opened, rx, got_data, dropped = open_run(
                                data, pos, segment, key, receiver, replay.ring,
                                replay.last + 1, v4, v6, frames,
                            )  # fmt: skip
                            replay.last = nxt - 1
                            self._count_open_drops(dropped)
                            if opened:
                                self._opened += opened
                                self._end_run(seen, peer, kp=kp, src=src, rx=rx, data=got_data)
                            if end > pos:
                                pos = end
                                continue
                end = min(pos + segment, size)
                if data[pos] == MSG_TRANSPORT:
                    single.append((memoryview(data)[pos:end], src))
                else:
                    # Handshake, cookie or junk: queued for process_handshakes or dropped
                    # now, as receive_datagrams would (a flood's cheapest way; a datagram
                    # received alone is passed as it is, not as a view to copy).
                    accept(data if end - pos == size else memoryview(data)[pos:end], src)
                pos = end
        if single:
            self._receive_singles(single, now, frames)
        for p, st in seen.items():
            self._after_receive(p, st.src, st.keypair, st.data, now)

    def _receive_singles(
        self, datagrams: list[tuple[Buffer, Endpoint]], now: float, frames: CoalescerLike
    ) -> None:
        """`receive_datagrams` for what receive_gro did not open in a run; empties the list."""
        for packet in self.receive_datagrams(datagrams, now):
            frames.add(packet)
        datagrams.clear()

    def _batch_path(self) -> Backend:
        if self._datapath is None:
            raise ValueError("frame batches need a data path: Device(datapath=...)")
        return self._datapath

    def _count_open_drops(self, dropped: tuple[int, int, int, int]) -> None:
        replay, decrypt, bad_packet, allowed = dropped
        if replay or decrypt or bad_packet or allowed:
            drops = self._drops
            for reason, n in (
                (DropReason.REPLAY, replay),
                (DropReason.DECRYPT, decrypt),
                (DropReason.BAD_PACKET, bad_packet),
                (DropReason.ALLOWED_IPS, allowed),
            ):
                if n:
                    drops.add(reason, n)

    # ---------------------------------------------------------------- outbound

    def send_frames(self, frames: Sequence[bytes], now: float, *, vnet: bool) -> None:
        """Route and seal what the TUN read: vnet frames (`vnet`, TSO/USO super-packets
        among them) or plain IP packets. Results wait in `gso_to_send()`.

        Consecutive frames for one peer with a usable session are sealed by the batch data
        path in one call (split, padded, sealed into one buffer with its UDP_SEGMENT groups).
        The rest (no session yet: staged; no route or malformed: dropped) goes through
        `send_packets` as split packets, so the outcome is always that of `send_packets`.
        """
        off = _VNET if vnet else 0
        cached_owner = self._allowed.cache.get
        lookup = self._allowed.lookup
        sent: dict[Peer, Keypair | None] = {}
        slow: list[bytes] = []
        run: list[bytes] = []
        run_peer: Peer | None = None
        run_kp: Keypair | None = None
        # Counters a batch may take at most: near exhaustion the per-packet path decides.
        limit = REJECT_AFTER_MESSAGES - _MAX_FRAME_SEGMENTS * len(frames)
        for frame in frames:
            n = len(frame) - off
            version = frame[off] >> 4 if n > 0 else 0
            if version == 4 and n >= 20:
                addr = frame[off + 16 : off + 20]
            elif version == 6 and n >= 40:
                addr = frame[off + 24 : off + 40]
            else:
                slow.append(frame)
                continue
            peer = cached_owner(addr)
            if peer is None:
                peer = lookup(addr)
            if peer is None:
                slow.append(frame)
                continue
            if peer is not run_peer:
                if run:
                    self._seal_run(run_peer, run_kp, run, vnet)  # type: ignore[arg-type]
                    run = []
                run_peer = peer
                run_kp, _ = self._prepare_send(peer, now, sent)
                if run_kp is None or run_kp.send_counter >= limit or run_kp.send_key is None:
                    if sent.get(peer, False) is None:
                        del sent[peer]  # send_packets below stages and handshakes
                    run_kp = None
            if run_kp is None:
                slow.append(frame)
            else:
                run.append(frame)
        if run:
            self._seal_run(run_peer, run_kp, run, vnet)  # type: ignore[arg-type]
        for peer, used in sent.items():
            if used is not None:
                self._after_send(peer, used, now, data=True)
            self._flush_staged(peer, now)
        if slow:
            packets = slow
            if vnet:
                packets, dropped = self._batch_path().split_frames(slow)
                self._frame_drops.update(dropped)
            self.send_packets(packets, now)

    def _seal_run(self, peer: Peer, kp: Keypair, frames: list[bytes], vnet: bool) -> None:
        endpoint = peer.endpoint
        key = kp.send_key
        assert endpoint is not None and key is not None
        max_bytes = _GSO_MAX_BYTES_V6 if ":" in endpoint[0] else _GSO_MAX_BYTES_V4
        buf, groups, used, dropped = self._batch_path().seal(
            frames, key, kp.remote_index, kp.send_counter, self.mtu, max_bytes, vnet
        )
        kp.send_counter += used
        self._sealed += used
        peer.tx_bytes += len(buf)
        if dropped:  # Counter.update costs an ABC check even when empty
            self._frame_drops.update(dropped)
        if buf:
            self._gso_out.append((endpoint, buf, groups))

    def send_packets(self, packets: Iterable[bytes], now: float) -> None:
        """Route, pad and seal IP packets; results wait in `datagrams_to_send()`.

        Consecutive packets for one peer form a run, sealed by its keypair's `seal_run`.
        """
        drops = self._drops
        lookup = self._allowed.lookup
        cached_owner = self._allowed.cache.get
        sent: dict[Peer, Keypair | None] = {}
        run: list[bytes] = []
        run_peer: Peer | None = None
        kp: Keypair | None = None
        dest: list[bytes] | None = None
        for pkt in packets:
            n = len(pkt)
            version = pkt[0] >> 4 if n else 0
            if version == 4 and n >= 20:
                addr = pkt[16:20]
            elif version == 6 and n >= 40:
                addr = pkt[24:40]
            else:
                drops.add(DropReason.BAD_PACKET)
                continue
            peer = cached_owner(addr)
            if peer is None:
                peer = lookup(addr)
            if peer is None:
                drops.add(DropReason.NO_ROUTE)
                continue
            if peer is not run_peer:
                if run:
                    self._seal_packets(run_peer, kp, run, dest, sent)  # type: ignore[arg-type]
                    run = []
                run_peer = peer
                kp, dest = self._prepare_send(peer, now, sent)
            if kp is None:
                if peer.endpoint is None:
                    drops.add(DropReason.NO_ENDPOINT)
                elif peer.stage(bytes(pkt)):
                    drops.add(DropReason.QUEUE_FULL)
                continue
            run.append(pkt)
        if run:
            self._seal_packets(run_peer, kp, run, dest, sent)  # type: ignore[arg-type]
        for peer, used in sent.items():
            if used is not None:
                self._after_send(peer, used, now, data=True)
            self._flush_staged(peer, now)

    def _seal_packets(
        self,
        peer: Peer,
        kp: Keypair,
        run: list[bytes],
        dest: list[bytes],
        sent: dict[Peer, Keypair | None],
    ) -> None:
        done, tx = kp.seal_run(run, dest, self.mtu)
        peer.tx_bytes += tx
        self._sealed += done
        if done < len(run):
            # Exhausted mid-batch: stage the rest and let the post-batch pass rekey.
            sent[peer] = None
            for pkt in run[done:]:
                if peer.stage(bytes(pkt)):
                    self._drops.add(DropReason.QUEUE_FULL)

    def _prepare_send(
        self, peer: Peer, now: float, sent: dict[Peer, Keypair | None]
    ) -> tuple[Keypair | None, list[bytes] | None]:
        """The keypair and output list for `peer`, or (None, None) to stage."""
        if peer.endpoint is None:
            return None, None
        kp = peer.current
        if kp is None or not kp.can_send(now):
            if kp is not None and kp.send is not None:
                self._events.append(KeypairExpired(peer.public_key, kp.local_index))
                kp.stop_sending()  # report once; it may still receive until it ages out
            sent.setdefault(peer, None)
            return None, None
        if peer.staged:
            # Keep order: what waited goes out before this batch.
            self._flush_staged(peer, now)
        sent[peer] = kp
        return kp, self._outbox.to(peer.endpoint)

    def _after_send(self, peer: Peer, kp: Keypair, now: float, *, data: bool) -> None:
        timers = peer.timers
        if data:
            timers.data_sent(now)
        timers.authenticated_sent(now)
        timers.authenticated_traversal(now)
        if needs_rekey_on_send(kp.is_initiator, kp.created, kp.send_counter, now):
            self._handshaker.initiate(peer, now, retry=False)

    def _flush_staged(self, peer: Peer, now: float) -> None:
        """Send what is staged (a b"" entry is a keepalive) or start a handshake."""
        if not peer.staged:
            return
        kp = peer.current
        if peer.endpoint is None:
            return
        if kp is None or not kp.can_send(now):
            self._handshaker.initiate(peer, now, retry=False)
            return
        dest = self._outbox.to(peer.endpoint)
        staged = peer.staged
        peer.staged = type(staged)()
        done, tx = kp.seal_run(staged, dest, self.mtu)
        peer.tx_bytes += tx
        self._sealed += done
        any_data = any(p for p in islice(staged, done))
        if done < len(staged):  # the counter ran out: what is left waits for a new session
            peer.staged.extend(islice(staged, done, None))
        self._after_send(peer, kp, now, data=any_data)

    def _send_keepalive(self, peer: Peer, now: float) -> None:
        peer.want_keepalive()
        self._flush_staged(peer, now)

    # ---------------------------------------------------------------- timers

    def handle_timers(self, now: float) -> None:
        """Create the paced initiations whose turn came, then act on every per-peer
        deadline that has passed (peers in the order added)."""
        handshaker = self._handshaker
        handshaker.release(now)
        for peer in self._timers.due(now):
            for action in peer.timers.expire(now):
                if action is TimerAction.RETRANSMIT_HANDSHAKE:
                    handshaker.initiate(peer, now, retry=True)
                elif action is TimerAction.GIVE_UP_HANDSHAKE:
                    # The pending handshake stays until the zero-keys timer (wireguard-go):
                    # a late response to the last initiation still completes it.
                    dropped = self._drop_staged(peer, DropReason.HANDSHAKE_TIMEOUT)
                    self._events.append(HandshakeFailed(peer.public_key, dropped))
                elif action is TimerAction.NEW_HANDSHAKE:
                    handshaker.initiate(peer, now, retry=False)
                elif action is TimerAction.ZERO_KEYS:
                    # wireguard-go's ZeroAndFlushAll: the staged packets go with the keys.
                    handshaker.zero(peer)
                    self._drop_staged(peer, DropReason.KEYS_ZEROED)
                    self._events.append(KeysZeroed(peer.public_key))
                else:  # SEND_KEEPALIVE, PERSISTENT_KEEPALIVE
                    self._send_keepalive(peer, now)

    # ---------------------------------------------------------------- helpers

    def _drop_staged(self, peer: Peer, reason: DropReason) -> int:
        dropped = sum(1 for p in peer.staged if p)
        if dropped:
            self._drops.add(reason, dropped)
        peer.staged.clear()
        return dropped
