"""Keypairs: the two transport AEADs of one session, its send counter and replay window.

The ChaCha20Poly1305 objects are built once per keypair, so sealing or opening a transport
message costs one AEAD call plus a header pack or unpack.
"""

from __future__ import annotations

import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from wiretun.wireguard.messages import MSG_TRANSPORT, TRANSPORT_HEADER_SIZE
from wiretun.wireguard.replay import REJECT_AFTER_MESSAGES, ReplayWindow
from wiretun.wireguard.timers import REJECT_AFTER_TIME

TRANSPORT_HEADER: Final = struct.Struct("<IIQ")  # type word, receiver index, counter
PADDING_MULTIPLE: Final = 16
NONCE: Final = struct.Struct("<4xQ")  # 4 zero bytes, then the counter little-endian


def padding_size(length: int, mtu: int) -> int:
    """Zero bytes to append to a `length`-byte packet: wireguard-go's calculatePaddingSize.

    Up to a multiple of 16, never past `mtu`; a packet larger than the MTU is padded as its
    last MTU-sized unit (`length % mtu`) would be; `mtu` 0 means plain rounding. Always < 16.
    """
    last_unit = length
    if mtu == 0:
        return ((last_unit + PADDING_MULTIPLE - 1) & ~(PADDING_MULTIPLE - 1)) - last_unit
    if last_unit > mtu:
        last_unit %= mtu
    padded = min((last_unit + PADDING_MULTIPLE - 1) & ~(PADDING_MULTIPLE - 1), mtu)
    return padded - last_unit


class Keypair:
    """One direction pair of transport keys, identified by our index and the peer's."""

    __slots__ = (
        "created",
        "is_initiator",
        "local_index",
        "recv",
        "recv_key",
        "remote_index",
        "replay",
        "send",
        "send_counter",
        "send_key",
    )

    def __init__(
        self,
        send_key: bytes,
        recv_key: bytes,
        local_index: int,
        remote_index: int,
        *,
        is_initiator: bool,
        created: float,
    ) -> None:
        if len(send_key) != 32 or len(recv_key) != 32:
            raise ValueError("transport keys must be 32 bytes")
        self.send: ChaCha20Poly1305 | None = ChaCha20Poly1305(send_key)
        self.recv: ChaCha20Poly1305 | None = ChaCha20Poly1305(recv_key)
        # The raw keys, for the batch data path (wiretun.datapath), which seals and opens
        # many messages per call; valid exactly while `send` / `recv` are.
        self.send_key: bytes | None = bytes(send_key)
        self.recv_key: bytes | None = bytes(recv_key)
        self.local_index = local_index
        self.remote_index = remote_index
        self.is_initiator = is_initiator
        self.created = created
        self.send_counter = 0
        self.replay = ReplayWindow()

    def can_send(self, now: float) -> bool:
        """Whether this keypair may still seal (not too old, counter not exhausted)."""
        return (
            self.send is not None
            and now - self.created < REJECT_AFTER_TIME
            and self.send_counter < REJECT_AFTER_MESSAGES
        )

    def can_receive(self, now: float) -> bool:
        return self.recv is not None and now - self.created < REJECT_AFTER_TIME

    def seal(self, padded: bytes) -> bytes:
        """A transport message carrying `padded` (already padded) with the next counter."""
        aead = self.send
        if aead is None or self.send_counter >= REJECT_AFTER_MESSAGES:
            raise ValueError("keypair can no longer send")
        counter = self.send_counter
        self.send_counter = counter + 1
        return TRANSPORT_HEADER.pack(MSG_TRANSPORT, self.remote_index, counter) + aead.encrypt(
            NONCE.pack(counter), padded, None
        )

    def open(self, counter: int, message: bytes) -> bytes | None:
        """The plaintext of a transport `message` if it authenticates, else None.

        The replay window is not touched: the caller marks the counter after success.
        """
        aead = self.recv
        if aead is None:
            return None
        try:
            return aead.decrypt(NONCE.pack(counter), message[TRANSPORT_HEADER_SIZE:], None)
        except InvalidTag:
            return None

    def stop_sending(self) -> None:
        """Receive only from now on (expired for sending, or the identity changed)."""
        self.send = None
        self.send_key = None

    def zero(self) -> None:
        """Forget the keys (Python cannot scrub memory, but nothing can use them any more)."""
        self.send = None
        self.recv = None
        self.send_key = None
        self.recv_key = None
