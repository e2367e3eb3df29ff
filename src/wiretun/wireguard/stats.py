"""What a Device counts: the drop reasons and the snapshot `Device.stats()` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from wiretun.wireguard.events import Endpoint
from wiretun.wireguard.keys import keyed_repr


class DropReason(StrEnum):
    """Why the core dropped something: the keys of `DeviceStats.drops` (a StrEnum member
    equals and hashes as its string, so either indexes the counts)."""

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
