"""What a Device counts: the drop reasons, their counters and the snapshot `Device.stats()`
returns."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

from wiretun.wireguard.events import Endpoint
from wiretun.wireguard.keys import keyed_repr


class DropReason(enum.Enum):
    """Why the core dropped something. The only keys `Drops` accepts, so the reasons in
    `stats().drops` are always these (their values), never a typo made at a call site."""

    BAD_SIZE = "bad_size"  # wrong length for its type
    BAD_TYPE = "bad_type"  # unknown message type
    BAD_ENDPOINT = "bad_endpoint"  # source address the core cannot parse
    UNKNOWN_INDEX = "unknown_index"  # receiver index matches no session or handshake
    EXPIRED = "expired"  # keypair too old to receive with
    MAC1 = "mac1"  # mac1 wrong
    COOKIE_SENT = "cookie_sent"  # under load without a valid mac2: answered with a cookie reply
    RATE_LIMITED = "rate_limited"  # handshake message over the per-source limit
    HANDSHAKE_FAILED = "handshake_failed"  # handshake message did not authenticate
    UNKNOWN_PEER = "unknown_peer"  # initiation from a static key we do not know
    HANDSHAKE_REPLAY = "handshake_replay"  # initiation timestamp not newer than the last one
    HANDSHAKE_FLOOD = "handshake_flood"  # initiations from one peer less than 20 ms apart
    # a handshake or cookie message found 1024 waiting: not looked at
    HANDSHAKE_QUEUE_FULL = "handshake_queue_full"
    COOKIE_INVALID = "cookie_invalid"  # cookie reply did not decrypt
    REPLAY = "replay"  # transport counter already seen or outside the window
    DECRYPT = "decrypt"  # transport message did not authenticate
    BAD_PACKET = "bad_packet"  # inner packet is not IPv4/IPv6 or its length is wrong
    ALLOWED_IPS = "allowed_ips"  # inner source not in the sending peer's allowed-ips
    NO_ROUTE = "no_route"  # no peer for an outgoing packet's destination
    NO_ENDPOINT = "no_endpoint"  # peer has no endpoint to send to
    QUEUE_FULL = "queue_full"  # staged queue overflow: the oldest packet was dropped
    # staged packets dropped when handshake attempts gave up
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    # staged packets dropped with all key material (540 s without a session)
    KEYS_ZEROED = "keys_zeroed"
    PEER_REMOVED = "peer_removed"  # staged packets dropped with their peer


DROP_REASONS: Final = tuple(reason.value for reason in DropReason)


class Drops:
    """Drop counters by `DropReason` (anything else is a TypeError, not a new key)."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[DropReason, int] = {}

    def add(self, reason: DropReason, n: int = 1) -> None:
        if type(reason) is not DropReason:
            raise TypeError(f"drops are counted by DropReason, not {reason!r}")
        counts = self._counts
        counts[reason] = counts.get(reason, 0) + n

    def count(self, reason: DropReason) -> int:
        return self._counts.get(reason, 0)

    def snapshot(self) -> dict[str, int]:
        """{reason value: count} for the reasons seen (what `DeviceStats.drops` holds)."""
        return {reason.value: n for reason, n in self._counts.items() if n}


@dataclass(frozen=True, slots=True, repr=False)
class PeerStats:
    __repr__ = keyed_repr
    public_key: bytes
    endpoint: Endpoint | None
    tx_bytes: int
    rx_bytes: int
    last_handshake: float | None  # wall-clock seconds, None if never
    staged_packets: int
    has_session: bool


@dataclass(frozen=True, slots=True)
class DeviceStats:
    drops: dict[str, int]
    peers: tuple[PeerStats, ...]
    packets_sealed: int
    packets_opened: int
    handshakes_completed: int
    # TUN frames `send_frames` dropped by the offload decoder's reasons (wiretun.tun.gso).
    frame_drops: dict[str, int] = field(default_factory=dict)
    handshakes_queued: int = 0  # received handshake messages waiting for process_handshakes
    initiations_waiting: int = 0  # peers whose initiation waits for the pacer
