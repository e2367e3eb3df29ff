"""WireGuard's anti-DoS layer: mac1/mac2, cookie replies, and a per-source rate limiter."""

from __future__ import annotations

import hmac
import secrets

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from wiretun.wireguard.crypto import (
    HASH_LEN,
    MAC_LEN,
    XNONCE_LEN,
    Rng,
    blake2s_hash,
    hchacha20,
    mac,
    xaead_open,
)
from wiretun.wireguard.errors import CryptoError
from wiretun.wireguard.messages import CookieReply

__all__ = [
    "COOKIE_REFRESH_TIME",
    "LABEL_COOKIE",
    "LABEL_MAC1",
    "CookieChecker",
    "CookieGenerator",
    "RateLimiter",
    "source_bytes",
]

LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"
COOKIE_REFRESH_TIME = 120.0  # seconds; both the responder's secret and the sender's cookie

_MACS_LEN = 2 * MAC_LEN
_ZERO_MAC = bytes(MAC_LEN)

# A reply's 24-byte XChaCha20 nonce is a 16-byte prefix, which alone decides the subkey
# (HChaCha20, ~6 us), and 8 more bytes. The prefix is drawn once for this many replies (and
# with every new secret), the 8 bytes for each: the cipher for the prefix is kept, and a
# reply costs a third. Nonces stay random and unique (a repeat needs two equal random
# 64-bit suffixes among 4096); the receiver sees an ordinary XChaCha20-Poly1305 nonce.
NONCE_PREFIX_REPLIES = 4096
_PREFIX_LEN = 16


def source_bytes(ip: bytes, port: int) -> bytes:
    """The `src` the cookie is bound to: packed IP (4 or 16 bytes) then the port as u16
    little-endian, matching wg-go's `DstToBytes` (netip.AddrPort.MarshalBinary)."""
    return bytes(ip) + port.to_bytes(2, "little")


def _mac1_key(public: bytes) -> bytes:
    return blake2s_hash(LABEL_MAC1, public)


def _cookie_key(public: bytes) -> bytes:
    return blake2s_hash(LABEL_COOKIE, public)


class CookieChecker:
    """Responder side, one per local static identity: verifies macs, issues cookies."""

    __slots__ = (
        "_cookie_key",
        "_mac1_key",
        "_prefix",
        "_prefix_cipher",
        "_prefix_left",
        "_rng",
        "_secret",
        "_secret_set",
    )

    def __init__(self, local_public: bytes, rng: Rng = secrets.token_bytes) -> None:
        self._mac1_key = _mac1_key(local_public)
        self._cookie_key = _cookie_key(local_public)
        self._rng = rng
        self._secret = b""
        self._secret_set: float | None = None
        # The reply nonces' current prefix, its cipher and how many replies it has left.
        self._prefix = b""
        self._prefix_cipher: ChaCha20Poly1305 | None = None
        self._prefix_left = 0

    def check_mac1(self, msg: bytes) -> bool:
        """True if mac1 (the 16 bytes before the last 16) is right for our public key."""
        if len(msg) < _MACS_LEN:
            return False
        expected = mac(self._mac1_key, msg[:-_MACS_LEN])
        return hmac.compare_digest(expected, msg[-_MACS_LEN:-MAC_LEN])

    def _secret_fresh(self, now: float) -> bool:
        return self._secret_set is not None and now - self._secret_set <= COOKIE_REFRESH_TIME

    def check_mac2(self, msg: bytes, src: bytes, now: float) -> bool:
        """True if mac2 was made with the cookie we would give `src` now.
        A secret older than 120 s (or none yet) fails every mac2, as in wg-go."""
        if len(msg) < _MACS_LEN or not self._secret_fresh(now):
            return False
        if msg[-MAC_LEN:] == _ZERO_MAC:
            # What a sender without a cookie sends (every flood message that never read our
            # replies): refused without the two MACs. A real mac2 is zero with odds 2^-128.
            return False
        cookie = mac(self._secret, src)
        expected = mac(cookie, msg[:-MAC_LEN])
        return hmac.compare_digest(expected, msg[-MAC_LEN:])

    def create_reply(self, msg: bytes, receiver_index: int, src: bytes, now: float) -> bytes:
        """A 64-byte type-3 reply to `msg` (whose mac1 was already checked)."""
        if len(msg) < _MACS_LEN:
            raise ValueError("message too short to carry macs")
        if not self._secret_fresh(now):
            self._secret = self._rng(HASH_LEN)
            self._secret_set = now
            self._prefix_left = 0
        cookie = mac(self._secret, src)
        cipher = self._prefix_cipher
        if self._prefix_left <= 0 or cipher is None:
            self._prefix = self._rng(_PREFIX_LEN)
            cipher = self._prefix_cipher = ChaCha20Poly1305(
                hchacha20(self._cookie_key, self._prefix)
            )
            self._prefix_left = NONCE_PREFIX_REPLIES
        self._prefix_left -= 1
        suffix = self._rng(XNONCE_LEN - _PREFIX_LEN)
        # XChaCha20-Poly1305 under the prefix's subkey: the ChaCha20 nonce is 4 zero bytes
        # and the last 8 of the 24.
        sealed = cipher.encrypt(b"\x00\x00\x00\x00" + suffix, cookie, msg[-_MACS_LEN:-MAC_LEN])
        return CookieReply(receiver_index, self._prefix + suffix, sealed).pack()


class CookieGenerator:
    """Initiator side, one per peer: fills mac1/mac2 and keeps the latest cookie."""

    __slots__ = ("_cookie", "_cookie_key", "_cookie_set", "_last_mac1", "_mac1_key")

    def __init__(self, remote_public: bytes) -> None:
        self._mac1_key = _mac1_key(remote_public)
        self._cookie_key = _cookie_key(remote_public)
        self._cookie = b""
        self._cookie_set: float | None = None
        self._last_mac1: bytes | None = None

    def add_macs(self, msg: bytearray | bytes, now: float) -> bytes:
        """`msg` with mac1 filled and mac2 set from a cookie younger than 120 s (else zeros)."""
        if len(msg) < _MACS_LEN:
            raise ValueError("message too short to carry macs")
        body = bytes(msg[:-_MACS_LEN])
        mac1 = mac(self._mac1_key, body)
        self._last_mac1 = mac1
        mac2 = _ZERO_MAC
        if self._cookie_set is not None and now - self._cookie_set <= COOKIE_REFRESH_TIME:
            mac2 = mac(self._cookie, body + mac1)
        return body + mac1 + mac2

    def consume_reply(self, reply: CookieReply, now: float) -> bool:
        """Store the cookie if the reply decrypts under the mac1 we last sent."""
        if self._last_mac1 is None:
            return False
        try:
            cookie = xaead_open(
                self._cookie_key, reply.nonce, reply.encrypted_cookie, self._last_mac1
            )
        except CryptoError:
            return False
        self._cookie = cookie
        self._cookie_set = now
        return True


class RateLimiter:
    """Token bucket per source IP for handshake messages under load (wg-go ratelimiter):
    20 packets/s with a burst of 5. IPv6 sources are keyed by their /64, as the kernel
    does, so one host cannot dodge the limit by rotating addresses in its prefix.
    Tokens are integer nanoseconds of credit, as in wg-go, so the arithmetic is exact."""

    __slots__ = ("_cost", "_gc_interval", "_last_gc", "_max_entries", "_max_tokens", "_table")

    def __init__(
        self,
        packets_per_second: int = 20,
        burst: int = 5,
        *,
        max_entries: int = 1 << 16,
        gc_interval: float = 1.0,
    ) -> None:
        if packets_per_second <= 0 or burst <= 0 or max_entries <= 0:
            raise ValueError("rate, burst and max_entries must be positive")
        self._cost = 1_000_000_000 // packets_per_second
        self._max_tokens = self._cost * burst
        self._max_entries = max_entries
        self._gc_interval = round(gc_interval * 1e9)
        self._last_gc: int | None = None
        # source key -> [tokens (ns of credit), time of its last packet (ns)]
        self._table: dict[bytes, list[int]] = {}

    def __len__(self) -> int:
        return len(self._table)

    def allow(self, src_ip: bytes, now: float) -> bool:
        """True if a handshake message from `src_ip` may be processed now."""
        now_ns = round(now * 1e9)
        if self._last_gc is None or now_ns - self._last_gc >= self._gc_interval:
            self._collect(now_ns)
        key = bytes(src_ip[:8]) if len(src_ip) == 16 else bytes(src_ip)
        entry = self._table.get(key)
        if entry is None:
            if len(self._table) >= self._max_entries:
                return False  # table full of active sources: refuse rather than grow
            self._table[key] = [self._max_tokens - self._cost, now_ns]
            return True
        tokens = min(self._max_tokens, entry[0] + max(0, now_ns - entry[1]))
        entry[1] = now_ns
        # wg-go tests `tokens > cost`, which yields its burst of 5 only because real time
        # passes between calls; `>=` keeps the burst of 5 with an exact (injected) clock.
        if tokens >= self._cost:
            entry[0] = tokens - self._cost
            return True
        entry[0] = tokens
        return False

    def _collect(self, now_ns: int) -> None:
        """Drop sources idle longer than gc_interval: their bucket has refilled anyway."""
        self._last_gc = now_ns
        stale = [k for k, (_, last) in self._table.items() if now_ns - last > self._gc_interval]
        for k in stale:
            del self._table[k]
