"""The data path's per-segment work in Python: the executable specification of `_native`.

Same functions, same arguments, same results (tests hold the two bit-equal). Built from the
pieces the per-packet path already uses: the offload split (`wiretun.tun.gso`), WireGuard's
padding rule and the GRO coalescer (`wiretun.tun.gro`), so this twin says in a few lines what
the C code does in a few hundred.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from wiretun.tun.gro import coalesce
from wiretun.tun.gso import MAX_SEGMENTS, OffloadStats, decode_frame, decode_frames
from wiretun.wireguard.replay import REJECT_AFTER_MESSAGES, ReplayWindow

__all__ = [
    "MAX_SEGMENTS",
    "OPEN_DROPS",
    "Coalescer",
    "group_sizes",
    "gso_plan",
    "open_run",
    "padding_size",
    "seal",
    "segments",
    "source_allowed",
    "split_frames",
    "split_frames_unvectorised",
]

OPEN_DROPS: Final = ("replay", "decrypt", "bad_packet", "allowed_ips")  # open_run's drops
UDP_GSO_MAX_SEGMENTS: Final = 64  # the kernel's UDP_MAX_SEGMENTS
RING_SIZE: Final = 8192
OVERHEAD: Final = 32  # transport header (16) + tag (16)

_HEADER = struct.Struct("<IIQ")
_NONCE = struct.Struct("<4xQ")
_PAD = [bytes(n) for n in range(16)]

Buffer = bytes | bytearray | memoryview


def padding_size(length: int, mtu: int) -> int:
    """Zero bytes after a `length`-byte packet: wireguard-go's calculatePaddingSize."""
    last_unit = length
    if mtu == 0:
        return ((last_unit + 15) & ~15) - last_unit
    if last_unit > mtu:
        last_unit %= mtu
    return min((last_unit + 15) & ~15, mtu) - last_unit


def gso_plan(sizes: Sequence[int], max_bytes: int) -> list[tuple[int, int, int]]:
    """UDP_SEGMENT sends for datagrams of `sizes` (in order) as (segment size, count, bytes):
    equal sizes, only the last smaller (it closes the group), at most 64 and `max_bytes` each.
    The one statement of the rule in Python (wiretun.tunnel.udp cuts datagram lists by it)."""
    groups: list[tuple[int, int, int]] = []
    size = total = count = 0
    is_open = False
    for n in sizes:
        if is_open and n <= size and count < UDP_GSO_MAX_SEGMENTS and total + n <= max_bytes:
            count += 1
            total += n
            groups[-1] = (size, count, total)
            if n < size:
                is_open = False
            continue
        groups.append((n, 1, n))
        size = total = n
        count = 1
        is_open = True
    return groups


def group_sizes(sizes: Sequence[int], max_bytes: int) -> list[tuple[int, int]]:
    """`gso_plan` as `seal` reports it: (segment size, bytes) per send."""
    return [(size, nbytes) for size, _, nbytes in gso_plan(sizes, max_bytes)]


def _segments_of(frame: Buffer, vnet: bool, drops: OffloadStats) -> list[bytes]:
    return decode_frame(frame, drops) if vnet else [bytes(frame)]


def split_frames(
    frames: Sequence[Buffer], *, vectorised: bool = True
) -> tuple[list[bytes], dict[str, int]]:
    """The IP packets of vnet frames, in order, and the frames dropped by reason
    (`vectorised=False`: without numpy, see wiretun.tun.gso.split_gso)."""
    stats = OffloadStats()
    return decode_frames(frames, stats, vectorised=vectorised), dict(stats.dropped)


def split_frames_unvectorised(frames: Sequence[Buffer]) -> tuple[list[bytes], dict[str, int]]:
    """`split_frames` without numpy: the native backend's, for the few frames its core sends
    the per-packet way (no session yet, no route), so that it never loads numpy (~18 MB)."""
    return split_frames(frames, vectorised=False)


def segments(frame: Buffer, vnet: bool) -> int:
    """How many segments (and counters) `frame` becomes; 0 for a frame the decoder drops."""
    return len(_segments_of(frame, vnet, OffloadStats()))


def seal(
    frames: Sequence[Buffer],
    key: bytes,
    receiver: int,
    counter: int,
    mtu: int,
    max_bytes: int,
    vnet: bool,
) -> tuple[bytes, list[tuple[int, int]], int, dict[str, int]]:
    """Seal every segment of `frames` with consecutive counters from `counter`: (buffer of
    transport messages, its UDP_SEGMENT groups, counters used, frame drops by reason).
    ValueError when they would run past 2**64 - 1 (the core stops far before that)."""
    if len(key) != 32:
        raise ValueError("keys are 32 bytes")
    if mtu < 0 or max_bytes <= 0:
        raise ValueError("bad mtu or max_bytes")
    if not 0 <= receiver <= 0xFFFFFFFF:
        raise ValueError("receiver out of range")
    if not 0 <= counter < 2**64:
        raise ValueError("counter out of range")
    aead = ChaCha20Poly1305(key)
    stats = OffloadStats()
    messages: list[bytes] = []
    ctr = counter
    for frame in frames:
        for seg in _segments_of(frame, vnet, stats):
            if ctr >= 2**64:
                raise ValueError("counter out of range")
            padded = seg + _PAD[padding_size(len(seg), mtu)]
            messages.append(
                _HEADER.pack(4, receiver, ctr) + aead.encrypt(_NONCE.pack(ctr), padded, None)
            )
            ctr += 1
    groups = group_sizes([len(m) for m in messages], max_bytes)
    return b"".join(messages), groups, ctr - counter, dict(stats.dropped)


class Coalescer:
    """Packets in, TUN write frames out, merged as the kernel's GRO would (verify=False:
    the packets were authenticated by the peer's AEAD)."""

    def __init__(self, *, vnet: bool = True, udp: bool = False) -> None:
        self.vnet = vnet
        self.udp = udp
        self._packets: list[bytes] = []

    def add(self, packet: Buffer) -> None:
        self._packets.append(bytes(packet))

    def pending(self) -> int:
        return len(self._packets)

    def finish(self) -> list[bytes]:
        packets, self._packets = self._packets, []
        if not self.vnet:
            return packets
        if not packets:
            return []
        return coalesce(packets, OffloadStats(), udp=self.udp, verify=False)


def source_allowed(table: bytes, source: bytes) -> bool:
    """Whether `source` is allowed by a table of (address, prefix length, allow) entries
    (stride 8 for IPv4, 24 for IPv6; see AllowedIPs.source_table): the longest match decides."""
    alen = len(source)
    stride = 8 if alen == 4 else 24
    best, allow = -1, False
    value = int.from_bytes(source, "big")
    bits = alen * 8
    for e in range(0, len(table) - stride + 1, stride):
        plen = table[e + alen]
        if plen <= best or plen > bits:
            continue
        prefix = int.from_bytes(table[e : e + alen], "big")
        if (prefix ^ value) >> (bits - plen):
            continue
        best, allow = plen, bool(table[e + alen + 1])
    return allow


def _window(ring: bytearray, next_counter: int) -> ReplayWindow:
    """The core's replay window over the caller's ring (next = newest counter + 1)."""
    window = ReplayWindow()
    window.ring = ring
    window.last = next_counter - 1
    return window


def open_run(
    data: Buffer,
    offset: int,
    segment: int,
    key: bytes,
    receiver: int,
    ring: bytearray,
    next_counter: int,
    allowed_v4: bytes,
    allowed_v6: bytes,
    coalescer: Coalescer,
) -> tuple[int, int, int, int, bool, tuple[int, int, int, int]]:
    """Open the transport messages for `receiver` in `data` from `offset` on, stopping at the
    first datagram that is not one: (offset reached, replay next, opened, rx bytes, any data,
    drops as in OPEN_DROPS). Accepted packets go to `coalescer`; `ring` is updated in place."""
    if len(key) != 32:
        raise ValueError("keys are 32 bytes")
    if len(ring) != RING_SIZE:
        raise ValueError("ring must be 8192 bytes")
    size = len(data)
    if offset < 0 or segment <= 0 or offset > size:
        raise ValueError("bad offset or segment")
    if not 0 <= receiver <= 0xFFFFFFFF:
        raise ValueError("receiver out of range")
    if not 0 <= next_counter <= REJECT_AFTER_MESSAGES:
        raise ValueError("replay position out of range")
    view = memoryview(data)
    aead = ChaCha20Poly1305(key)
    replay = decrypt = bad_packet = allowed = opened = rx = 0
    got_data = False
    pos = offset
    window = _window(ring, next_counter)
    while pos < size:
        d = view[pos : min(pos + segment, size)]
        n = len(d)
        kind, index, counter = _HEADER.unpack_from(d) if n >= OVERHEAD else (0, 0, 0)
        if n < OVERHEAD or kind != 4 or index != receiver:
            break
        pos += n
        if not window.would_accept(counter):
            replay += 1
            continue
        try:
            plain = aead.decrypt(_NONCE.pack(counter), d[16:], None)
        except InvalidTag:
            decrypt += 1
            continue
        if not window.check_and_mark(counter):
            replay += 1
            continue
        opened += 1
        rx += n
        if not plain:
            continue
        m = len(plain)
        version = plain[0] >> 4
        if version == 4 and m >= 20:
            length = (plain[2] << 8) | plain[3]
            if length < 20:
                length = m + 1
            source, table = plain[12:16], allowed_v4
        elif version == 6 and m >= 40:
            length = 40 + ((plain[4] << 8) | plain[5])
            source, table = plain[8:24], allowed_v6
        else:
            bad_packet += 1
            continue
        if length > m:
            bad_packet += 1
            continue
        if not source_allowed(table, source):
            allowed += 1
            continue
        got_data = True
        coalescer.add(plain[:length])
    return pos, window.last + 1, opened, rx, got_data, (replay, decrypt, bad_packet, allowed)
