"""The four WireGuard message types: exact-size little-endian pack/unpack."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Self

from wiretun.wireguard.errors import MessageError

__all__ = [
    "COOKIE_REPLY_SIZE",
    "INITIATION_SIZE",
    "MAC1_OFFSET_FROM_END",
    "MAC2_OFFSET_FROM_END",
    "MSG_COOKIE_REPLY",
    "MSG_INITIATION",
    "MSG_RESPONSE",
    "MSG_TRANSPORT",
    "RESPONSE_SIZE",
    "TRANSPORT_HEADER",
    "TRANSPORT_HEADER_SIZE",
    "TRANSPORT_MIN_SIZE",
    "CookieReply",
    "Initiation",
    "Response",
    "message_type",
    "pack_transport_header",
    "unpack_transport_header",
]

MSG_INITIATION = 1
MSG_RESPONSE = 2
MSG_COOKIE_REPLY = 3
MSG_TRANSPORT = 4

INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
TRANSPORT_HEADER_SIZE = 16
TRANSPORT_MIN_SIZE = 32  # header + the tag of an empty (keepalive) payload

# mac1 and mac2 are the last 32 bytes of initiations and responses.
MAC1_OFFSET_FROM_END = 32
MAC2_OFFSET_FROM_END = 16

_U32_MAX = 0xFFFFFFFF
_U64_MAX = (1 << 64) - 1

# The type is byte 0 followed by three reserved zero bytes; "<I" reads all four at once.
_INITIATION = struct.Struct("<II32s48s28s16s16s")
_RESPONSE = struct.Struct("<III32s16s16s16s")
_COOKIE_REPLY = struct.Struct("<II24s32s")
TRANSPORT_HEADER = struct.Struct("<IIQ")
"""Type word, receiver index, counter: the one statement of the type-4 header, which the
Keypair's batch seal and open (session.py) use directly and the helpers below check."""
_TYPE = struct.Struct("<I")


def message_type(data: bytes) -> int:
    """The message type 1..4, or 0 if `data` does not start with a valid type header."""
    if len(data) < 4:
        return 0
    (word,) = _TYPE.unpack_from(data)
    return word if MSG_INITIATION <= word <= MSG_TRANSPORT else 0


def _check_index(name: str, value: int) -> None:
    if not 0 <= value <= _U32_MAX:
        raise MessageError(f"{name} {value} is not a u32")


def _check_len(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise MessageError(f"{name} is {len(value)} bytes, wanted {size}")


def _check_frame(data: bytes, size: int, kind: int) -> None:
    if len(data) != size:
        raise MessageError(f"type {kind} message is {len(data)} bytes, wanted {size}")
    if message_type(data) != kind:
        raise MessageError(f"bad type header {bytes(data[:4]).hex()} for type {kind}")


@dataclass(frozen=True, slots=True)
class Initiation:
    """Type 1: the initiator's ephemeral key, encrypted static key and timestamp."""

    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes = bytes(16)
    mac2: bytes = bytes(16)

    def __post_init__(self) -> None:
        _check_index("sender", self.sender)
        _check_len("ephemeral", self.ephemeral, 32)
        _check_len("encrypted_static", self.encrypted_static, 48)
        _check_len("encrypted_timestamp", self.encrypted_timestamp, 28)
        _check_len("mac1", self.mac1, 16)
        _check_len("mac2", self.mac2, 16)

    def pack(self) -> bytes:
        return _INITIATION.pack(
            MSG_INITIATION,
            self.sender,
            self.ephemeral,
            self.encrypted_static,
            self.encrypted_timestamp,
            self.mac1,
            self.mac2,
        )

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        _check_frame(data, INITIATION_SIZE, MSG_INITIATION)
        _, sender, eph, static, ts, mac1, mac2 = _INITIATION.unpack(data)
        return cls(sender, eph, static, ts, mac1, mac2)


@dataclass(frozen=True, slots=True)
class Response:
    """Type 2: the responder's ephemeral key and an authenticated empty payload."""

    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes = bytes(16)
    mac2: bytes = bytes(16)

    def __post_init__(self) -> None:
        _check_index("sender", self.sender)
        _check_index("receiver", self.receiver)
        _check_len("ephemeral", self.ephemeral, 32)
        _check_len("encrypted_nothing", self.encrypted_nothing, 16)
        _check_len("mac1", self.mac1, 16)
        _check_len("mac2", self.mac2, 16)

    def pack(self) -> bytes:
        return _RESPONSE.pack(
            MSG_RESPONSE,
            self.sender,
            self.receiver,
            self.ephemeral,
            self.encrypted_nothing,
            self.mac1,
            self.mac2,
        )

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        _check_frame(data, RESPONSE_SIZE, MSG_RESPONSE)
        _, sender, receiver, eph, nothing, mac1, mac2 = _RESPONSE.unpack(data)
        return cls(sender, receiver, eph, nothing, mac1, mac2)


@dataclass(frozen=True, slots=True)
class CookieReply:
    """Type 3: a cookie for mac2, XChaCha20-Poly1305-sealed under the mac1 it answers."""

    receiver: int
    nonce: bytes
    encrypted_cookie: bytes

    def __post_init__(self) -> None:
        _check_index("receiver", self.receiver)
        _check_len("nonce", self.nonce, 24)
        _check_len("encrypted_cookie", self.encrypted_cookie, 32)

    def pack(self) -> bytes:
        return _COOKIE_REPLY.pack(
            MSG_COOKIE_REPLY, self.receiver, self.nonce, self.encrypted_cookie
        )

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        _check_frame(data, COOKIE_REPLY_SIZE, MSG_COOKIE_REPLY)
        _, receiver, nonce, cookie = _COOKIE_REPLY.unpack(data)
        return cls(receiver, nonce, cookie)


def pack_transport_header(receiver: int, counter: int) -> bytes:
    """The 16-byte header of a type-4 message."""
    _check_index("receiver", receiver)
    if not 0 <= counter <= _U64_MAX:
        raise MessageError(f"counter {counter} is not a u64")
    return TRANSPORT_HEADER.pack(MSG_TRANSPORT, receiver, counter)


def unpack_transport_header(data: bytes) -> tuple[int, int]:
    """(receiver index, counter) of a type-4 message at least TRANSPORT_MIN_SIZE long."""
    if len(data) < TRANSPORT_MIN_SIZE:
        raise MessageError(f"transport message is {len(data)} bytes, minimum {TRANSPORT_MIN_SIZE}")
    kind, receiver, counter = TRANSPORT_HEADER.unpack_from(data)
    if kind != MSG_TRANSPORT:
        raise MessageError(f"bad type header {bytes(data[:4]).hex()} for type 4")
    return receiver, counter
