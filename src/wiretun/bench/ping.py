"""ICMP echo round-trip times from inside a namespace (no dependency on a ping binary)."""

from __future__ import annotations

import os
import select
import socket
import statistics
import struct
import time
from dataclasses import dataclass

from wiretun.lab.netns import NetNS
from wiretun.packet import internet_checksum

_ECHO_REQUEST = 8
_ECHO_REPLY = 0
_HEADER = struct.Struct("!BBHHH")
_PAYLOAD = b"wiretun-bench-ping-" + bytes(37)  # 56 bytes, like ping(8)


@dataclass(frozen=True, slots=True)
class PingResult:
    sent: int
    rtts_ms: tuple[float, ...]

    @property
    def received(self) -> int:
        return len(self.rtts_ms)

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.rtts_ms) if self.rtts_ms else None


def echo_request(ident: int, seq: int) -> bytes:
    header = _HEADER.pack(_ECHO_REQUEST, 0, 0, ident, seq)
    checksum = internet_checksum(header + _PAYLOAD)
    return _HEADER.pack(_ECHO_REQUEST, 0, checksum, ident, seq) + _PAYLOAD


def parse_echo_reply(datagram: bytes, ident: int) -> int | None:
    """The sequence number of our echo reply in a raw IPv4 datagram, or None for anything else."""
    if len(datagram) < 20 or datagram[0] >> 4 != 4:
        return None
    ihl = (datagram[0] & 0x0F) * 4
    if len(datagram) < ihl + _HEADER.size:
        return None
    kind, _code, _sum, rid, seq = _HEADER.unpack_from(datagram, ihl)
    if kind != _ECHO_REPLY or rid != ident:
        return None
    return int(seq)


def _open_icmp(ns: NetNS) -> socket.socket:
    # A socket keeps the namespace it was created in, so only its creation happens inside.
    with ns.enter():
        return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)


def ping(
    ns: NetNS, target: str, count: int, interval: float = 0.2, reply_timeout: float = 1.0
) -> PingResult:
    """Send `count` echo requests from `ns` to `target`, one per `interval`; RTTs in ms."""
    ident = (os.getpid() ^ int.from_bytes(os.urandom(2), "big")) & 0xFFFF
    rtts: list[float] = []
    with _open_icmp(ns) as sock:
        for seq in range(count):
            started = time.perf_counter()
            sock.sendto(echo_request(ident, seq), (target, 0))
            deadline = started + reply_timeout
            while (left := deadline - time.perf_counter()) > 0:
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    break
                if parse_echo_reply(sock.recv(2048), ident) == seq:
                    rtts.append((time.perf_counter() - started) * 1000)
                    break
            if seq + 1 < count:
                time.sleep(max(0.0, started + interval - time.perf_counter()))
    return PingResult(sent=count, rtts_ms=tuple(rtts))


def wait_reachable(ns: NetNS, target: str, timeout: float) -> bool:
    """Ping until one reply arrives (this also completes a tunnel handshake) or `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ping(ns, target, 1, reply_timeout=0.5).received:
            return True
    return False
