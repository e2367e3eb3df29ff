"""WireGuard's primitives: X25519, BLAKE2s hash/MAC/HMAC/HKDF, (X)ChaCha20-Poly1305, TAI64N."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from wiretun.wireguard.errors import CryptoError

__all__ = [
    "HASH_LEN",
    "KEY_LEN",
    "MAC_LEN",
    "TAG_LEN",
    "TIMESTAMP_LEN",
    "XNONCE_LEN",
    "AeadKey",
    "Rng",
    "aead_open",
    "aead_seal",
    "blake2s_hash",
    "dh",
    "generate_private_key",
    "hchacha20",
    "hmac_blake2s",
    "kdf1",
    "kdf2",
    "kdf3",
    "mac",
    "public_key",
    "tai64n",
    "xaead_open",
    "xaead_seal",
]

KEY_LEN = 32  # every key: Curve25519 private and public, ChaCha20, preshared
HASH_LEN = 32
MAC_LEN = 16
TAG_LEN = 16
TIMESTAMP_LEN = 12
XNONCE_LEN = 24

Rng = Callable[[int], bytes]
"""Source of random bytes; injectable so tests can be deterministic."""

NONCE = struct.Struct("<4xQ")  # 4 zero bytes, then the counter as u64 LE
_MAX_COUNTER = (1 << 64) - 1


# --- X25519 -------------------------------------------------------------------------------


def _clamp(scalar: bytes) -> bytes:
    b = bytearray(scalar)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def generate_private_key(rng: Rng = secrets.token_bytes) -> bytes:
    """A fresh X25519 private key, clamped the way `wg genkey` prints it."""
    raw = rng(KEY_LEN)
    if len(raw) != KEY_LEN:
        raise CryptoError(f"rng returned {len(raw)} bytes, wanted {KEY_LEN}")
    return _clamp(raw)


def public_key(private: bytes) -> bytes:
    """The X25519 public key of `private`."""
    try:
        return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    except ValueError as exc:
        raise CryptoError(f"bad private key: {exc}") from exc


def dh(private: bytes, public: bytes) -> bytes:
    """X25519(private, public); an all-zero result (low-order point) raises CryptoError."""
    try:
        priv = X25519PrivateKey.from_private_bytes(private)
        return priv.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:  # wrong length, or cryptography refusing an all-zero secret
        raise CryptoError(f"X25519 failed: {exc}") from exc


# --- BLAKE2s ------------------------------------------------------------------------------


def blake2s_hash(*parts: bytes) -> bytes:
    """BLAKE2s-256 over the concatenation of `parts`."""
    h = hashlib.blake2s()
    for part in parts:
        h.update(part)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    """Keyed BLAKE2s-128 (mac1, mac2 and cookies)."""
    return hashlib.blake2s(data, digest_size=MAC_LEN, key=key).digest()


def hmac_blake2s(key: bytes, data: bytes) -> bytes:
    """HMAC with BLAKE2s-256 as the hash (block size 64), as the Noise HKDF needs."""
    return hmac.digest(key, data, hashlib.blake2s)


def kdf1(key: bytes, data: bytes) -> bytes:
    """HKDF-BLAKE2s with one 32-byte output."""
    prk = hmac_blake2s(key, data)
    return hmac_blake2s(prk, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    """HKDF-BLAKE2s with two 32-byte outputs."""
    prk = hmac_blake2s(key, data)
    t1 = hmac_blake2s(prk, b"\x01")
    t2 = hmac_blake2s(prk, t1 + b"\x02")
    return t1, t2


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    """HKDF-BLAKE2s with three 32-byte outputs."""
    prk = hmac_blake2s(key, data)
    t1 = hmac_blake2s(prk, b"\x01")
    t2 = hmac_blake2s(prk, t1 + b"\x02")
    t3 = hmac_blake2s(prk, t2 + b"\x03")
    return t1, t2, t3


# --- ChaCha20-Poly1305 --------------------------------------------------------------------


def _nonce(counter: int) -> bytes:
    if not 0 <= counter <= _MAX_COUNTER:
        raise CryptoError(f"counter {counter} outside u64")
    return NONCE.pack(counter)


class AeadKey:
    """A ChaCha20-Poly1305 key set up once, with WireGuard's nonce layout and CryptoError.

    Used by the handshake's one-shot `aead_seal`/`aead_open`; the transport path (session,
    device) calls ChaCha20Poly1305 directly, to save a call and a range check per packet.
    """

    __slots__ = ("_cipher",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_LEN:
            raise CryptoError(f"key is {len(key)} bytes, wanted {KEY_LEN}")
        self._cipher = ChaCha20Poly1305(key)

    def seal(self, counter: int, plaintext: bytes, ad: bytes = b"") -> bytes:
        """Ciphertext ‖ 16-byte tag, nonce = 4 zero bytes ‖ u64le(counter)."""
        return self._cipher.encrypt(_nonce(counter), plaintext, ad)

    def open(self, counter: int, ciphertext: bytes, ad: bytes = b"") -> bytes:
        """The plaintext; CryptoError if the tag does not verify."""
        try:
            return self._cipher.decrypt(_nonce(counter), ciphertext, ad)
        except InvalidTag as exc:
            raise CryptoError("AEAD tag mismatch") from exc


def aead_seal(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    """ChaCha20-Poly1305 with WireGuard's nonce layout (one-shot; see AeadKey for bulk)."""
    return AeadKey(key).seal(counter, plaintext, ad)


def aead_open(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    """Inverse of aead_seal; CryptoError on a bad tag, key or counter."""
    return AeadKey(key).open(counter, ciphertext, ad)


# --- XChaCha20-Poly1305 (cookie replies) ---------------------------------------------------

_SIGMA = struct.unpack("<4I", b"expand 32-byte k")
_MASK32 = 0xFFFFFFFF
_WORDS = struct.Struct("<16I")
_ZERO_BLOCK = bytes(64)


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha §2.2): the ChaCha20 rounds without the final
    addition, keeping words 0-3 and 12-15 as the 32-byte subkey.

    A responder under a handshake flood makes one per cookie reply, so it must be cheap:
    OpenSSL's ChaCha20 (whose 16-byte nonce fills words 12-15 exactly) gives the rounds plus
    the input state, and subtracting the known input words leaves HChaCha20's output."""
    if len(key) != KEY_LEN or len(nonce16) != 16:
        raise CryptoError("HChaCha20 needs a 32-byte key and a 16-byte nonce")
    block = Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor().update(_ZERO_BLOCK)
    w = _WORDS.unpack(block)
    n = struct.unpack("<4I", nonce16)
    return struct.pack(
        "<8I",
        *((w[i] - _SIGMA[i]) & _MASK32 for i in range(4)),
        *((w[12 + i] - n[i]) & _MASK32 for i in range(4)),
    )


def _xchacha(key: bytes, nonce24: bytes) -> tuple[ChaCha20Poly1305, bytes]:
    if len(nonce24) != XNONCE_LEN:
        raise CryptoError(f"XChaCha nonce is {len(nonce24)} bytes, wanted {XNONCE_LEN}")
    subkey = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(subkey), b"\x00\x00\x00\x00" + nonce24[16:]


def xaead_seal(key: bytes, nonce24: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """XChaCha20-Poly1305: ciphertext ‖ tag."""
    cipher, nonce = _xchacha(key, nonce24)
    return cipher.encrypt(nonce, plaintext, ad)


def xaead_open(key: bytes, nonce24: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """Inverse of xaead_seal; CryptoError on a bad tag or sizes."""
    cipher, nonce = _xchacha(key, nonce24)
    try:
        return cipher.decrypt(nonce, ciphertext, ad)
    except InvalidTag as exc:
        raise CryptoError("XAEAD tag mismatch") from exc


# --- TAI64N -------------------------------------------------------------------------------

_TAI64_BASE = 0x400000000000000A  # 2^62 + the 10 s TAI-UTC offset, as wg-go uses
# wg-go clears the low 24 bits of the nanoseconds so the timestamp does not leak fine timing.
_WHITENER = 0xFFFFFF
_TAI64N = struct.Struct(">QI")


def tai64n(wall_time: float) -> bytes:
    """12-byte big-endian TAI64N label for `wall_time` (seconds since the Unix epoch)."""
    if not math.isfinite(wall_time) or wall_time < 0:
        raise ValueError(f"wall_time must be a finite, non-negative float, got {wall_time!r}")
    secs = math.floor(wall_time)
    nanos = min(int((wall_time - secs) * 1e9), 999_999_999) & ~_WHITENER
    return _TAI64N.pack(_TAI64_BASE + secs, nanos)
