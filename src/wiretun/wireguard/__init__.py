"""Sans-I/O WireGuard protocol core: crypto, messages, handshake, cookies, sessions, timers."""

from wiretun.wireguard.allowedips import AllowedIPs
from wiretun.wireguard.device import DROP_REASONS, Device, DeviceStats, DropReason, PeerStats
from wiretun.wireguard.errors import CryptoError, HandshakeError, MessageError, WireGuardError
from wiretun.wireguard.events import (
    Event,
    HandshakeCompleted,
    HandshakeFailed,
    KeypairExpired,
    KeysZeroed,
    PeerEndpointChanged,
)
from wiretun.wireguard.keys import key_from_base64, key_from_hex, key_to_base64, key_to_hex
from wiretun.wireguard.peer import Peer
from wiretun.wireguard.replay import ReplayWindow
from wiretun.wireguard.session import Keypair

__all__ = [
    "DROP_REASONS",
    "AllowedIPs",
    "CryptoError",
    "Device",
    "DeviceStats",
    "DropReason",
    "Event",
    "HandshakeCompleted",
    "HandshakeError",
    "HandshakeFailed",
    "Keypair",
    "KeypairExpired",
    "KeysZeroed",
    "MessageError",
    "Peer",
    "PeerEndpointChanged",
    "PeerStats",
    "ReplayWindow",
    "WireGuardError",
    "key_from_base64",
    "key_from_hex",
    "key_to_base64",
    "key_to_hex",
]
