"""A peer: its configuration, its three keypairs and pending handshake, queue and counters.

The Handshaker owns the index table and writes the handshake fields; the Device owns the
outputs and the transport fields; a Peer only keeps per-peer state and the keypair rotation
rules (wireguard-go's BeginSymmetricSession / ReceivedWithKeypair).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Final

from wiretun.wireguard.allowedips import AllowedIPs, IPNetwork
from wiretun.wireguard.cookie import CookieGenerator
from wiretun.wireguard.crypto import KEY_LEN
from wiretun.wireguard.events import Endpoint, PeerEndpointChanged
from wiretun.wireguard.handshake import InitiatorHandshake
from wiretun.wireguard.keys import key_to_base64
from wiretun.wireguard.session import Keypair
from wiretun.wireguard.timers import PeerTimers

MAX_STAGED_PACKETS: Final = 128
"""Packets kept per peer while waiting for a session; older ones are dropped first (and
counted as ``queue_full``). wireguard-go's QueueStagedSize and the kernel's
MAX_STAGED_PACKETS are 128 too: more only holds memory for a handshake that may never come."""


def check_key(name: str, key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_LEN:
        raise ValueError(f"{name} must be {KEY_LEN} bytes")
    return bytes(key)


def check_endpoint(endpoint: Endpoint | None) -> Endpoint | None:
    if endpoint is None:
        return None
    host, port = endpoint[0], endpoint[1]
    if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"endpoint must be (host: str, port: 1..65535), got {endpoint!r}")
    return (host, port)


def check_keepalive(interval: int | None) -> int:
    if interval is None:
        return 0
    if not isinstance(interval, int) or not 0 <= interval <= 65535:
        raise ValueError(f"persistent keepalive must be 0..65535 seconds, got {interval!r}")
    return interval


class Peer:
    """One remote peer. Configure it through the Device; read its state here."""

    __slots__ = (
        "_allowed",
        "cookie",
        "current",
        "endpoint",
        "handshake",
        "handshake_sent_at",
        "last_handshake",
        "last_initiation_at",
        "last_timestamp",
        "next",
        "preshared_key",
        "previous",
        "public_key",
        "rx_bytes",
        "sent_last_minute_handshake",
        "staged",
        "timers",
        "tx_bytes",
    )

    def __init__(
        self,
        public_key: bytes,
        allowed: AllowedIPs[Peer],
        rng: Callable[[int], bytes],
        *,
        preshared_key: bytes | None = None,
        endpoint: Endpoint | None = None,
        persistent_keepalive: int | None = None,
    ) -> None:
        self.public_key = check_key("public key", public_key)
        self.preshared_key = None if preshared_key is None else check_key("psk", preshared_key)
        self.endpoint = check_endpoint(endpoint)
        self._allowed = allowed
        self.timers = PeerTimers(rng, check_keepalive(persistent_keepalive))
        self.cookie = CookieGenerator(self.public_key)
        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None
        self.handshake: InitiatorHandshake | None = None
        self.handshake_sent_at = float("-inf")
        self.last_timestamp = b""  # TAI64N is big-endian: bytes order is time order
        self.last_initiation_at = float("-inf")
        self.sent_last_minute_handshake = False
        self.staged: deque[bytes] = deque()
        self.tx_bytes = 0
        self.rx_bytes = 0
        self.last_handshake: float | None = None  # wall-clock seconds

    def __repr__(self) -> str:
        return f"Peer({key_to_base64(self.public_key)}, endpoint={self.endpoint})"

    @property
    def persistent_keepalive(self) -> int:
        """Seconds between persistent keepalives; 0 means off."""
        return self.timers.persistent_interval

    @property
    def allowed_ips(self) -> list[IPNetwork]:
        return list(self._allowed.networks(self))

    def keypairs(self) -> Iterator[Keypair]:
        for kp in (self.previous, self.current, self.next):
            if kp is not None:
                yield kp

    def roam_to(self, src: Endpoint) -> PeerEndpointChanged | None:
        """Follow an authenticated datagram's source; the event if the endpoint moved."""
        new = (src[0], src[1])
        old = self.endpoint
        if old == new:
            return None
        self.endpoint = new
        return PeerEndpointChanged(self.public_key, old, new)

    def want_keepalive(self) -> None:
        """Something must go out (b"" stages a keepalive) unless packets already wait."""
        if not self.staged:
            self.staged.append(b"")

    def stage(self, packet: bytes) -> int:
        """Queue a packet until a session exists; returns how many old packets were dropped
        (a pending keepalive, b"", makes room without counting: it carried no data)."""
        staged = self.staged
        dropped = 0
        if len(staged) >= MAX_STAGED_PACKETS:
            dropped = 1 if staged.popleft() else 0
        staged.append(packet)
        return dropped

    def begin_session(self, keypair: Keypair) -> list[Keypair]:
        """Install a fresh keypair; returns the keypairs that are now unreachable.

        The initiator may use it at once. The responder parks it in `next` until the peer
        proves it has the keys too (key confirmation, see `confirm`).
        """
        dead: list[Keypair] = []
        if keypair.is_initiator:
            if self.next is not None:
                dead += [kp for kp in (self.previous, self.current) if kp is not None]
                self.previous = self.next
                self.next = None
            else:
                if self.previous is not None:
                    dead.append(self.previous)
                self.previous = self.current
            self.current = keypair
        else:
            dead += [kp for kp in (self.next, self.previous) if kp is not None]
            self.next = keypair
            self.previous = None
        return dead

    def confirm(self, keypair: Keypair) -> Keypair | None:
        """Promote `next` to `current` if `keypair` is it; returns the dropped keypair.

        Called when a transport message authenticated under `keypair`.
        """
        if keypair is not self.next:
            return None
        dead = self.previous
        self.previous = self.current
        self.current = keypair
        self.next = None
        return dead

    def clear_keypairs(self) -> list[Keypair]:
        dead = list(self.keypairs())
        for kp in dead:
            kp.zero()
        self.previous = self.current = self.next = None
        return dead
