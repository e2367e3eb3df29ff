"""Events the Device reports to its shell (pulled with `Device.next_event()`)."""

from __future__ import annotations

from dataclasses import dataclass

from wiretun.wireguard.keys import keyed_repr

Endpoint = tuple[str, int]


@dataclass(frozen=True, slots=True, repr=False)
class HandshakeCompleted:
    """A new session with the peer is usable (initiator: response arrived; responder:
    the first transport message under the new keys arrived)."""

    __repr__ = keyed_repr
    public_key: bytes
    is_initiator: bool
    endpoint: Endpoint | None


@dataclass(frozen=True, slots=True, repr=False)
class HandshakeFailed:
    """Handshake attempts gave up after the retry limit; staged packets were dropped."""

    __repr__ = keyed_repr
    public_key: bytes
    dropped_packets: int


@dataclass(frozen=True, slots=True, repr=False)
class PeerEndpointChanged:
    """An authenticated datagram came from a new address (roaming)."""

    __repr__ = keyed_repr
    public_key: bytes
    old: Endpoint | None
    new: Endpoint


@dataclass(frozen=True, slots=True, repr=False)
class KeypairExpired:
    """The current keypair can no longer send (too old or too many messages)."""

    __repr__ = keyed_repr
    public_key: bytes
    local_index: int


@dataclass(frozen=True, slots=True, repr=False)
class KeysZeroed:
    """All key material of the peer was forgotten (540 s without a new handshake), and the
    packets staged for it were dropped (counted as ``keys_zeroed``)."""

    __repr__ = keyed_repr
    public_key: bytes


Event = HandshakeCompleted | HandshakeFailed | PeerEndpointChanged | KeypairExpired | KeysZeroed
