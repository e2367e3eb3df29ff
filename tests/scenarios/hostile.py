"""Hostile underlay traffic for live robustness tests: garbage, mutated messages, floods.

Everything here sends from sockets the caller created inside a test namespace; nothing
is aimed anywhere but the address the caller gives.
"""

from __future__ import annotations

import random
import secrets
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from wiretun.wireguard.cookie import LABEL_COOKIE, CookieGenerator
from wiretun.wireguard.crypto import MAC_LEN, blake2s_hash, mac, xaead_open
from wiretun.wireguard.errors import CryptoError
from wiretun.wireguard.handshake import InitiatorHandshake, StaticIdentity
from wiretun.wireguard.messages import (
    COOKIE_REPLY_SIZE,
    MSG_COOKIE_REPLY,
    MSG_INITIATION,
    MSG_RESPONSE,
    MSG_TRANSPORT,
    RESPONSE_SIZE,
    CookieReply,
)

Address = tuple[str, int]
_U32 = struct.Struct("<I")
_ETH_P_IP = 0x0800
_IPPROTO_UDP = 17


def stranger_initiation(responder_public: bytes, *, sender: int | None = None) -> bytes:
    """A well-formed initiation with a valid mac1 for `responder_public` from a random static
    key the responder does not know: it costs the responder its full mac1 + DH work."""
    stranger = StaticIdentity.generate()
    index = secrets.randbits(32) if sender is None else sender
    hs = InitiatorHandshake.create(stranger, responder_public, None, index, time.time())
    return CookieGenerator(responder_public).add_macs(hs.message, 0.0)


def _with_u32(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + _U32.pack(value) + data[offset + 4 :]


def _flip(rng: random.Random, data: bytes, start: int = 0) -> bytes:
    buf = bytearray(data)
    i = rng.randrange(start, len(buf))
    buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf)


def _resize(rng: random.Random, data: bytes) -> bytes:
    if rng.random() < 0.5:
        return data[: rng.randrange(4, len(data))]
    return data + rng.randbytes(rng.randrange(1, 64))


@dataclass
class GarbageMaker:
    """Random datagrams and mutated versions of valid ones, labelled by kind.

    `initiations` are well-formed ones (valid mac1) for the target from static keys it does
    not know (`stranger_initiation`); `transports` are real transport messages seen on the
    wire (their receiver index is live), only ever sent mutated so none can authenticate.
    """

    rng: random.Random
    responder_public: bytes
    initiations: Sequence[bytes]
    transports: Sequence[bytes] = ()

    def __post_init__(self) -> None:
        self.macs = CookieGenerator(self.responder_public)

    def make(self) -> tuple[str, bytes]:
        kinds: list[Callable[[], tuple[str, bytes]]] = [
            self._random,
            self._bad_type,
            self._initiation_stranger,
            self._initiation_mutated,
            self._initiation_bad_size,
            self._response_bad_index,
            self._response_bad_size,
            self._cookie_bad_index,
            self._cookie_bad_size,
            self._transport_bad_index,
            self._transport_short,
        ]
        if self.transports:
            kinds += [self._transport_mutated, self._transport_mutated, self._transport_counter]
        return self.rng.choice(kinds)()

    def _random(self) -> tuple[str, bytes]:
        r = self.rng
        return "random", r.randbytes(r.choice((r.randrange(4), r.randrange(200), 1400)))

    def _bad_type(self) -> tuple[str, bytes]:
        kind = self.rng.choice((0, 5, 0xFF, 0x0101, 0x01000000))
        return "bad_type", _U32.pack(kind) + self.rng.randbytes(self.rng.randrange(0, 200))

    def _initiation_mutated(self) -> tuple[str, bytes]:
        # A flipped bit anywhere breaks mac1 or (inside the mac) the mac itself.
        return "initiation_mutated", _flip(self.rng, self.rng.choice(self.initiations), 4)

    def _initiation_bad_size(self) -> tuple[str, bytes]:
        return "initiation_bad_size", _resize(self.rng, self.rng.choice(self.initiations))

    def _initiation_stranger(self) -> tuple[str, bytes]:
        # Authentic-looking, from a key the target does not know.
        return "initiation_stranger", self.rng.choice(self.initiations)

    def _response(self) -> bytes:
        # A valid mac1 gets it past the cheap check to the index lookup, which must fail.
        r = self.rng
        body = struct.pack("<III", MSG_RESPONSE, r.getrandbits(32), r.getrandbits(32))
        return self.macs.add_macs(body + r.randbytes(RESPONSE_SIZE - len(body)), 0.0)

    def _response_bad_index(self) -> tuple[str, bytes]:
        return "response_bad_index", self._response()

    def _response_bad_size(self) -> tuple[str, bytes]:
        return "response_bad_size", _resize(self.rng, self._response())

    def _cookie(self) -> bytes:
        r = self.rng
        body = struct.pack("<II", MSG_COOKIE_REPLY, r.getrandbits(32))
        return body + r.randbytes(COOKIE_REPLY_SIZE - len(body))

    def _cookie_bad_index(self) -> tuple[str, bytes]:
        return "cookie_bad_index", self._cookie()

    def _cookie_bad_size(self) -> tuple[str, bytes]:
        return "cookie_bad_size", _resize(self.rng, self._cookie())

    def _transport_bad_index(self) -> tuple[str, bytes]:
        r = self.rng
        header = struct.pack("<IIQ", MSG_TRANSPORT, r.getrandbits(32), r.getrandbits(64))
        return "transport_bad_index", header + r.randbytes(r.randrange(16, 1400))

    def _transport_short(self) -> tuple[str, bytes]:
        r = self.rng
        return "transport_short", _U32.pack(MSG_TRANSPORT) + r.randbytes(r.randrange(0, 28))

    def _transport_mutated(self) -> tuple[str, bytes]:
        # Live index, broken ciphertext or tag: must fail authentication.
        return "transport_mutated", _flip(self.rng, self.rng.choice(self.transports), 16)

    def _transport_counter(self) -> tuple[str, bytes]:
        # Live index, a counter far ahead: the nonce no longer matches, so it must not open
        # (and must not move the replay window).
        data = self.rng.choice(self.transports)
        counter = self.rng.getrandbits(40) + (1 << 20)
        return "transport_counter", data[:8] + struct.pack("<Q", counter) + data[16:]


@dataclass
class SprayStats:
    sent: Counter[str] = field(default_factory=Counter)
    send_errors: int = 0
    replies: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.sent.values())


class _Worker:
    """A thread that runs `step()` until stopped; errors end it and are re-raised on join."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            self.loop(self._stop)
        except Exception as e:  # noqa: BLE001 - handed to stop(), which re-raises it
            self._error = e

    def loop(self, stop: threading.Event) -> None:
        raise NotImplementedError


class Sprayer(_Worker):
    """Sends `maker`'s garbage at `target` from `socks` (round robin) at about `rate`
    datagrams/s until stopped, and counts what comes back by message type."""

    def __init__(
        self, socks: Sequence[socket.socket], target: Address, maker: GarbageMaker, rate: float
    ) -> None:
        super().__init__("sprayer")
        self.socks = list(socks)
        self.target = target
        self.maker = maker
        self.rate = rate
        self.stats = SprayStats()
        for s in self.socks:
            s.setblocking(False)

    def loop(self, stop: threading.Event) -> None:
        start = time.monotonic()
        i = 0
        while not stop.is_set():
            # Pace in bursts of 32 so the rate holds without a sleep per datagram.
            due = start + i / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for _ in range(32):
                kind, data = self.maker.make()
                sock = self.socks[i % len(self.socks)]
                i += 1
                try:
                    sock.sendto(data, self.target)
                    self.stats.sent[kind] += 1
                except (BlockingIOError, ConnectionRefusedError):
                    self.stats.send_errors += 1
            _drain_replies(self.socks, self.stats.replies)


def _drain_replies(socks: Sequence[socket.socket], replies: Counter[str]) -> None:
    ready, _, _ = select.select(socks, [], [], 0)
    for s in ready:
        while True:
            try:
                data = s.recv(2048)
            except (BlockingIOError, ConnectionRefusedError):
                break
            replies[_kind(data)] += 1


def _kind(data: bytes) -> str:
    names = {MSG_INITIATION: "initiation", MSG_RESPONSE: "response"}
    names |= {MSG_COOKIE_REPLY: "cookie_reply", MSG_TRANSPORT: "transport"}
    return names.get(_U32.unpack_from(data)[0], "other") if len(data) >= 4 else "other"


@dataclass
class FloodStats:
    sent: int = 0
    sent_with_mac2: int = 0
    send_errors: int = 0
    cookie_replies: int = 0  # replies that decrypted under the mac1 we sent: real cookies
    bad_replies: int = 0
    other_replies: int = 0
    sources_with_cookie: int = 0  # sources that adopted a cookie (sent a valid mac2)


class HandshakeFlood(_Worker):
    """Initiations with a valid mac1 from many source ports at about `rate`/s.

    Each socket is one source (address, port). The first `cookie_sources` sockets behave
    like real initiators: once they got a cookie reply, their initiations carry the mac2 it
    makes valid, so the responder must fall back on its per-source-IP rate limit. The rest
    ignore cookies, so each of their initiations costs the responder a cookie reply.
    """

    def __init__(
        self,
        socks: Sequence[socket.socket],
        target: Address,
        responder_public: bytes,
        *,
        rate: float,
        cookie_sources: int | None = None,
        pool: int = 64,
    ) -> None:
        super().__init__("handshake-flood")
        self.socks = list(socks)
        self.target = target
        self.rate = rate
        self.stats = FloodStats()
        # Building an initiation costs three DH operations: reuse a pool (the responder
        # cannot tell, a repeated timestamp only matters for peers it knows).
        self._pool = [stranger_initiation(responder_public) for _ in range(pool)]
        self._cookie_key = blake2s_hash(LABEL_COOKIE, responder_public)
        self._by_index = {_U32.unpack_from(m, 4)[0]: m for m in self._pool}
        self._cookies: dict[int, bytes] = {}  # fileno -> cookie
        n = len(self.socks) if cookie_sources is None else cookie_sources
        self._adopt = {s.fileno() for s in self.socks[:n]}
        for s in self.socks:
            s.setblocking(False)

    def loop(self, stop: threading.Event) -> None:
        start = time.monotonic()
        i = 0
        socks = self.socks
        while not stop.is_set():
            due = start + i / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for _ in range(32):
                sock = socks[i % len(socks)]
                msg = self._pool[i % len(self._pool)]
                i += 1
                cookie = self._cookies.get(sock.fileno())
                if cookie is not None:
                    msg = msg[:-MAC_LEN] + mac(cookie, msg[:-MAC_LEN])
                try:
                    sock.sendto(msg, self.target)
                except (BlockingIOError, ConnectionRefusedError):
                    self.stats.send_errors += 1
                    continue
                self.stats.sent += 1
                self.stats.sent_with_mac2 += cookie is not None
            self._read_replies()
        self.stats.sources_with_cookie = len(self._cookies)

    def _read_replies(self) -> None:
        ready, _, _ = select.select(self.socks, [], [], 0)
        for s in ready:
            while True:
                try:
                    data = s.recv(2048)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                cookie = self._open_cookie(data)
                if cookie is None:
                    if _kind(data) == "cookie_reply":
                        self.stats.bad_replies += 1
                    else:
                        self.stats.other_replies += 1
                    continue
                self.stats.cookie_replies += 1
                if s.fileno() in self._adopt:
                    self._cookies[s.fileno()] = cookie

    def _open_cookie(self, data: bytes) -> bytes | None:
        """The cookie in a reply to one of our initiations, or None if it is not one."""
        if len(data) != COOKIE_REPLY_SIZE or _kind(data) != "cookie_reply":
            return None
        reply = CookieReply.unpack(data)
        sent = self._by_index.get(reply.receiver)
        if sent is None:
            return None
        mac1 = sent[-2 * MAC_LEN : -MAC_LEN]
        try:
            return xaead_open(self._cookie_key, reply.nonce, reply.encrypted_cookie, mac1)
        except CryptoError:
            return None


def packet_socket(ifname: str) -> socket.socket:
    """An AF_PACKET socket seeing the IPv4 packets on `ifname` (open it inside the namespace
    that owns the interface): how a test learns live receiver indices from the wire."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(_ETH_P_IP))
    try:
        sock.bind((ifname, _ETH_P_IP))
    except OSError:
        sock.close()
        raise
    return sock


def read_udp_payloads(
    sock: socket.socket, dport: int, count: int, *, timeout: float = 5.0
) -> list[bytes]:
    """Up to `count` UDP payloads to port `dport` seen by a `packet_socket`."""
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            pkt = sock.recv(65535)
        except TimeoutError:
            break
        if len(pkt) < 28 or pkt[0] >> 4 != 4 or pkt[9] != _IPPROTO_UDP:
            continue
        ihl = (pkt[0] & 0x0F) * 4
        if int.from_bytes(pkt[ihl + 2 : ihl + 4], "big") == dport:
            out.append(pkt[ihl + 8 :])
    return out


def udp_sockets(count: int, bind_host: str, family: int = socket.AF_INET) -> list[socket.socket]:
    """`count` UDP sockets on distinct ephemeral ports of `bind_host` (create them inside the
    namespace they must send from)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(family, socket.SOCK_DGRAM)
            socks.append(s)
            s.bind((bind_host, 0))
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks
