"""What a Device counts: the drop reasons and the snapshot `Device.stats()` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from wiretun.wireguard.events import Endpoint

DROP_REASONS: Final = (
    "bad_size",  # wrong length for its type
    "bad_type",  # unknown message type
    "bad_endpoint",  # source address the core cannot parse
    "unknown_index",  # receiver index matches no session or handshake
    "expired",  # keypair too old to receive with
    "mac1",  # mac1 wrong
    "cookie_sent",  # under load without a valid mac2: answered with a cookie reply
    "rate_limited",  # handshake message over the per-source limit
    "handshake_failed",  # handshake message did not authenticate
    "unknown_peer",  # initiation from a static key we do not know
    "handshake_replay",  # initiation timestamp not newer than the last one
    "handshake_flood",  # initiations from one peer less than 20 ms apart
    "handshake_queue_full",  # handshake or cookie message while 1024 waited: not looked at
    "cookie_invalid",  # cookie reply did not decrypt
    "replay",  # transport counter already seen or outside the window
    "decrypt",  # transport message did not authenticate
    "bad_packet",  # inner packet is not IPv4/IPv6 or its length is wrong
    "allowed_ips",  # inner source not in the sending peer's allowed-ips
    "no_route",  # no peer for an outgoing packet's destination
    "no_endpoint",  # peer has no endpoint to send to
    "queue_full",  # staged queue overflow: the oldest packet was dropped
    "handshake_timeout",  # staged packets dropped when handshake attempts gave up
    "keys_zeroed",  # staged packets dropped with all key material (540 s without a session)
    "peer_removed",  # staged packets dropped with their peer
)


@dataclass(frozen=True, slots=True)
class PeerStats:
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
