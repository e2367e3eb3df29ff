"""Noise IKpsk2 as WireGuard uses it: a generic symmetric state, the two message patterns,
and the initiator/responder objects the device layer drives."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Self

from wiretun.wireguard.crypto import (
    KEY_LEN,
    Rng,
    aead_open,
    aead_seal,
    blake2s_hash,
    dh,
    generate_private_key,
    kdf1,
    kdf2,
    kdf3,
    public_key,
    tai64n,
)
from wiretun.wireguard.errors import CryptoError, HandshakeError, MessageError
from wiretun.wireguard.messages import Initiation, Response

__all__ = [
    "CONSTRUCTION",
    "IDENTIFIER",
    "InitiatorHandshake",
    "ResponderHandshake",
    "SessionKeys",
    "StaticIdentity",
    "SymmetricState",
    "consume_initiation",
    "initial_state",
    "read_message1",
    "read_message2",
    "write_message1",
    "write_message2",
]

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"  # the Noise prologue
_NO_PSK = bytes(KEY_LEN)


@dataclass(slots=True)
class SymmetricState:
    """Noise's chaining key and handshake hash. Every handshake encryption uses a fresh key
    at nonce 0 (IKpsk2 never encrypts twice under one key), so no cipher state is kept."""

    chaining_key: bytes = field(repr=False)  # every session key derives from it
    hash: bytes

    @classmethod
    def initialize(cls, protocol_name: bytes, prologue: bytes) -> Self:
        if len(protocol_name) <= 32:
            h = protocol_name.ljust(32, b"\x00")
        else:
            h = blake2s_hash(protocol_name)
        state = cls(h, h)
        state.mix_hash(prologue)
        return state

    def copy(self) -> SymmetricState:
        return SymmetricState(self.chaining_key, self.hash)

    def mix_hash(self, data: bytes) -> None:
        self.hash = blake2s_hash(self.hash, data)

    def mix_chain(self, data: bytes) -> None:
        """MixKey whose key is never used (the `e` token in psk mode, ee and se before psk):
        KDF1 is KDF2's first output, so this saves one HMAC."""
        self.chaining_key = kdf1(self.chaining_key, data)

    def mix_key(self, data: bytes) -> bytes:
        """MixKey: advance the chaining key and return the new encryption key."""
        self.chaining_key, key = kdf2(self.chaining_key, data)
        return key

    def mix_key_and_hash(self, data: bytes) -> bytes:
        """MixKeyAndHash (the psk token): returns the new encryption key."""
        self.chaining_key, temp_h, key = kdf3(self.chaining_key, data)
        self.mix_hash(temp_h)
        return key

    def encrypt_and_hash(self, key: bytes, plaintext: bytes) -> bytes:
        ciphertext = aead_seal(key, 0, plaintext, self.hash)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, key: bytes, ciphertext: bytes) -> bytes:
        plaintext = aead_open(key, 0, ciphertext, self.hash)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        """(initiator->responder key, responder->initiator key)."""
        return kdf2(self.chaining_key, b"")


@dataclass(frozen=True, slots=True)
class StaticIdentity:
    """A long-term X25519 key pair."""

    private: bytes = field(repr=False)
    public: bytes

    @classmethod
    def from_private(cls, private: bytes) -> Self:
        return cls(private, public_key(private))

    @classmethod
    def generate(cls, rng: Rng = secrets.token_bytes) -> Self:
        return cls.from_private(generate_private_key(rng))


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The transport keys one completed handshake yields, seen from the local side."""

    send_key: bytes = field(repr=False)
    recv_key: bytes = field(repr=False)
    local_index: int
    remote_index: int
    is_initiator: bool


# --- the two IKpsk2 message patterns, shared by WireGuard and the Noise vector test ----------


def initial_state(responder_static: bytes, prologue: bytes = IDENTIFIER) -> SymmetricState:
    """State after the prologue and the pre-message `<- s` (the responder's static key)."""
    if prologue == IDENTIFIER:
        state = _WIREGUARD_INITIAL.copy()
    else:
        state = SymmetricState.initialize(CONSTRUCTION, prologue)
    state.mix_hash(responder_static)
    return state


def write_message1(
    state: SymmetricState,
    local: StaticIdentity,
    remote_static: bytes,
    ephemeral_private: bytes,
    payload: bytes,
) -> tuple[bytes, bytes, bytes]:
    """`-> e, es, s, ss` + payload: returns (ephemeral public, sealed static, sealed payload)."""
    ephemeral = public_key(ephemeral_private)
    state.mix_hash(ephemeral)
    state.mix_chain(ephemeral)
    key = state.mix_key(dh(ephemeral_private, remote_static))
    sealed_static = state.encrypt_and_hash(key, local.public)
    key = state.mix_key(dh(local.private, remote_static))
    sealed_payload = state.encrypt_and_hash(key, payload)
    return ephemeral, sealed_static, sealed_payload


def read_message1(
    state: SymmetricState,
    local: StaticIdentity,
    remote_ephemeral: bytes,
    sealed_static: bytes,
    sealed_payload: bytes,
) -> tuple[bytes, bytes]:
    """Responder side of message 1: returns (initiator static public key, payload)."""
    state.mix_hash(remote_ephemeral)
    state.mix_chain(remote_ephemeral)
    key = state.mix_key(dh(local.private, remote_ephemeral))
    remote_static = state.decrypt_and_hash(key, sealed_static)
    key = state.mix_key(dh(local.private, remote_static))
    payload = state.decrypt_and_hash(key, sealed_payload)
    return remote_static, payload


def write_message2(
    state: SymmetricState,
    ephemeral_private: bytes,
    *,
    remote_ephemeral: bytes,
    remote_static: bytes,
    psk: bytes,
    payload: bytes,
) -> tuple[bytes, bytes]:
    """`<- e, ee, se, psk` + payload: returns (ephemeral public, sealed payload)."""
    ephemeral = public_key(ephemeral_private)
    state.mix_hash(ephemeral)
    state.mix_chain(ephemeral)
    state.mix_chain(dh(ephemeral_private, remote_ephemeral))
    state.mix_chain(dh(ephemeral_private, remote_static))
    key = state.mix_key_and_hash(psk)
    return ephemeral, state.encrypt_and_hash(key, payload)


def read_message2(
    state: SymmetricState,
    local: StaticIdentity,
    *,
    ephemeral_private: bytes,
    remote_ephemeral: bytes,
    psk: bytes,
    sealed_payload: bytes,
) -> bytes:
    """Initiator side of message 2: returns the payload."""
    state.mix_hash(remote_ephemeral)
    state.mix_chain(remote_ephemeral)
    state.mix_chain(dh(ephemeral_private, remote_ephemeral))
    state.mix_chain(dh(local.private, remote_ephemeral))
    key = state.mix_key_and_hash(psk)
    return state.decrypt_and_hash(key, sealed_payload)


_WIREGUARD_INITIAL = SymmetricState.initialize(CONSTRUCTION, IDENTIFIER)


# --- WireGuard's use of the patterns ------------------------------------------------------


def _psk_or_zero(psk: bytes | None) -> bytes:
    if psk is None:
        return _NO_PSK
    if len(psk) != KEY_LEN:
        raise ValueError(f"preshared key is {len(psk)} bytes, wanted {KEY_LEN}")
    return psk


def _ephemeral(ephemeral_private: bytes | None, rng: Rng) -> bytes:
    return generate_private_key(rng) if ephemeral_private is None else ephemeral_private


class InitiatorHandshake:
    """One in-flight initiation; `message` is sent (after cookie.py adds the macs) and the
    matching response is fed to `consume_response` once."""

    __slots__ = (
        "_done",
        "_ephemeral",
        "_local",
        "_psk",
        "_state",
        "message",
        "remote_static",
        "sender_index",
    )

    def __init__(
        self,
        *,
        local: StaticIdentity,
        remote_static: bytes,
        psk: bytes,
        sender_index: int,
        ephemeral_private: bytes,
        state: SymmetricState,
        message: bytes,
    ) -> None:
        self._local = local
        self._psk = psk
        self._ephemeral = ephemeral_private
        self._state = state
        self._done = False
        self.remote_static = remote_static
        self.sender_index = sender_index
        self.message = message

    @classmethod
    def create(
        cls,
        local: StaticIdentity,
        remote_static: bytes,
        psk: bytes | None,
        sender_index: int,
        wall_time: float,
        *,
        ephemeral_private: bytes | None = None,
        rng: Rng = secrets.token_bytes,
    ) -> InitiatorHandshake:
        """Build the 148-byte initiation (macs zero). Raises HandshakeError if the remote
        static key is unusable (a low-order point)."""
        ephemeral_private = _ephemeral(ephemeral_private, rng)
        state = initial_state(remote_static)
        try:
            eph, sealed_static, sealed_ts = write_message1(
                state, local, remote_static, ephemeral_private, tai64n(wall_time)
            )
            message = Initiation(sender_index, eph, sealed_static, sealed_ts).pack()
        except (CryptoError, MessageError) as exc:
            raise HandshakeError(f"cannot create initiation: {exc}") from exc
        return cls(
            local=local,
            remote_static=remote_static,
            psk=_psk_or_zero(psk),
            sender_index=sender_index,
            ephemeral_private=ephemeral_private,
            state=state,
            message=message,
        )

    @property
    def handshake_hash(self) -> bytes:
        return self._state.hash

    def consume_response(self, msg: Response) -> SessionKeys:
        """Authenticate the response and derive the keys; HandshakeError on any failure.
        The state is only advanced on success, so a forged response does not spoil it."""
        if self._done:
            raise HandshakeError("initiation already answered")
        if msg.receiver != self.sender_index:
            raise HandshakeError(f"response is for index {msg.receiver}, not {self.sender_index}")
        state = self._state.copy()
        try:
            read_message2(
                state,
                self._local,
                ephemeral_private=self._ephemeral,
                remote_ephemeral=msg.ephemeral,
                psk=self._psk,
                sealed_payload=msg.encrypted_nothing,
            )
        except CryptoError as exc:
            raise HandshakeError(f"response did not authenticate: {exc}") from exc
        self._state = state
        self._done = True
        send, recv = state.split()
        return SessionKeys(send, recv, self.sender_index, msg.sender, is_initiator=True)


class ResponderHandshake:
    """An authenticated initiation; the caller checks `remote_static` is a known peer and
    `timestamp` is newer than the last one from it, then calls `create_response` once."""

    __slots__ = (
        "_done",
        "_state",
        "remote_ephemeral",
        "remote_index",
        "remote_static",
        "timestamp",
    )

    def __init__(
        self,
        state: SymmetricState,
        remote_static: bytes,
        remote_ephemeral: bytes,
        remote_index: int,
        timestamp: bytes,
    ) -> None:
        self._state = state
        self._done = False
        self.remote_static = remote_static
        self.remote_ephemeral = remote_ephemeral
        self.remote_index = remote_index
        self.timestamp = timestamp

    @property
    def handshake_hash(self) -> bytes:
        return self._state.hash

    def create_response(
        self,
        psk: bytes | None,
        sender_index: int,
        *,
        ephemeral_private: bytes | None = None,
        rng: Rng = secrets.token_bytes,
    ) -> tuple[bytes, SessionKeys]:
        """The 92-byte response (macs zero) and the responder's session keys."""
        if self._done:
            raise HandshakeError("response already created for this initiation")
        psk = _psk_or_zero(psk)
        ephemeral_private = _ephemeral(ephemeral_private, rng)
        state = self._state.copy()
        try:
            eph, sealed = write_message2(
                state,
                ephemeral_private,
                remote_ephemeral=self.remote_ephemeral,
                remote_static=self.remote_static,
                psk=psk,
                payload=b"",
            )
            message = Response(sender_index, self.remote_index, eph, sealed).pack()
        except (CryptoError, MessageError) as exc:
            raise HandshakeError(f"cannot create response: {exc}") from exc
        self._state = state
        self._done = True
        initiator_to_responder, responder_to_initiator = state.split()
        keys = SessionKeys(
            responder_to_initiator,
            initiator_to_responder,
            sender_index,
            self.remote_index,
            is_initiator=False,
        )
        return message, keys


def consume_initiation(local: StaticIdentity, msg: Initiation) -> ResponderHandshake:
    """Decrypt the initiator's static key and timestamp; HandshakeError if they do not
    authenticate against `local`."""
    state = initial_state(local.public)
    try:
        remote_static, timestamp = read_message1(
            state, local, msg.ephemeral, msg.encrypted_static, msg.encrypted_timestamp
        )
    except CryptoError as exc:
        raise HandshakeError(f"initiation did not authenticate: {exc}") from exc
    return ResponderHandshake(state, remote_static, msg.ephemeral, msg.sender, timestamp)
