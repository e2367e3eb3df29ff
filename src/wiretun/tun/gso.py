"""The virtio_net_hdr read side: parse the header and split GSO super-packets into segments.

numpy (the `pure` extra) builds the segments of a large super-packet as array operations;
without it, or with `vectorised=False`, the same segments are built one by one. numpy is
imported only when a vectorised split first runs: the native data path, which splits in C
and asks for the rare split it leaves to Python unvectorised, starts without it.
"""

from __future__ import annotations

import functools
import logging
import struct
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from wiretun.packet import PROTO_TCP, PROTO_UDP, ones_complement_sum

# include/uapi/linux/virtio_net.h, legacy (pre-1.0) header as TUN uses it: native byte order.
VNET_HDR_LEN = 10
VNET_HDR = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3  # UFO: never negotiated, so never accepted
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80  # TUN_F_TSO_ECN is not offered, so the kernel must not send it
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)

TCP_FIN = 0x01
TCP_PSH = 0x08
TCP_ACK = 0x10

# The most segments the kernel cuts a TUN super-packet into: 64 KB at the smallest MSS TCP
# sends (net.ipv4.tcp_min_snd_mss, 48 bytes); USO stops at 128. Beyond it we drop and count.
# (It was 256, which silently dropped every super-packet of a flow with an MSS below 256.)
MIN_MSS = 48
MAX_SEGMENTS = -(-0xFFFF // MIN_MSS)  # 1366
# What one frame may become in all: every segment repeats the headers, so a forged header
# length times a tiny gso_size would otherwise turn 64 KB into megabytes. The largest real
# split (IPv4 with 60+60 header bytes at MAX_SEGMENTS) is 229 KB.
MAX_SPLIT_BYTES = 1 << 18
# IPv6 extension headers a GSO packet may carry before its TCP/UDP header (hop-by-hop,
# routing, destination options: (length + 1) * 8 bytes each); a longer chain is dropped.
IPV6_EXT_HEADERS = frozenset((0, 43, 60))
MAX_IPV6_EXT = 4

log = logging.getLogger(__name__)

# Below this many segments numpy's fixed cost eats what it saves (one by one vs numpy, one
# TCP/IPv4 super-packet: 2 segments 13-16 vs 16-22 us, 10: 59 vs 30, 45: 239 vs 41;
# scripts/numpy_cost.py).
VECTOR_MIN_SEGMENTS = 4


@functools.cache
def have_numpy() -> bool:
    """Whether numpy (the `pure` extra) can be imported: asked by the first vectorised call,
    so the import (~18 MB, ~60 ms) happens only where numpy does some work."""
    try:
        import numpy  # noqa: F401, PLC0415
    except ImportError:
        log.info("numpy is not installed: offload split and coalesce run unvectorised "
                 "(slower on the pure data path; pip install 'wiretun[pure]')")  # fmt: skip
        return False
    return True


_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_LITTLE = sys.byteorder == "little"
SWAP = 256 if _LITTLE else 1  # native u32 word sums -> big-endian u16 sums, mod 0xffff


@dataclass
class OffloadStats:
    """Counters of the offload codec; plain ints so the hot path pays one add per event."""

    frames_in: int = 0  # frames decoded
    gso_frames_in: int = 0  # super-packets split
    segments_out: int = 0  # packets produced by decode
    csum_completed: int = 0  # NEEDS_CSUM finished in software on non-GSO packets
    packets_in: int = 0  # packets given to encode
    frames_out: int = 0  # frames produced by encode
    gso_frames_out: int = 0  # frames carrying a GSO header
    coalesced: int = 0  # packets merged into an earlier one (writes saved)
    gso_write_rejected: int = 0  # GSO writes the kernel refused (EINVAL)
    fallback_packets: int = 0  # packets re-written plainly after such a refusal
    dropped: Counter[str] = field(default_factory=Counter)  # by reason

    def snapshot(self) -> OffloadStats:
        """An independent copy, safe to read while the codec keeps counting."""
        return replace(self, dropped=Counter(self.dropped))


def fold32(total: int) -> int:
    """Fold an integer sum of 16-bit words into 16 bits (one's complement)."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _complete_csum(pkt: memoryview, start: int, offset: int, stats: OffloadStats) -> bytes | None:
    """Finish a CHECKSUM_PARTIAL packet: the field holds the pseudo-header sum already."""
    at = start + offset
    if at + 2 > len(pkt) or start < 20:
        stats.dropped["bad_csum_offset"] += 1
        return None
    out = bytearray(pkt)
    csum = ~ones_complement_sum(memoryview(out)[start:]) & 0xFFFF
    if csum == 0 and offset == 6 and _l4_proto(out, start) == PROTO_UDP:
        csum = 0xFFFF  # 0 means "no checksum" in UDP
    _U16.pack_into(out, at, csum)
    stats.csum_completed += 1
    return bytes(out)


def ipv6_l4_offset(pkt: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(offset, protocol) of the header after an IPv6 packet's extension headers, or None
    if the chain runs past the packet or is longer than MAX_IPV6_EXT headers."""
    n = len(pkt)
    nh, off = pkt[6], 40
    for _ in range(MAX_IPV6_EXT + 1):
        if nh not in IPV6_EXT_HEADERS:
            return off, nh
        if off + 2 > n:
            return None
        nh, off = pkt[off], off + (pkt[off + 1] + 1) * 8
    return None


def _l4_proto(pkt: bytes | bytearray | memoryview, start: int) -> int:
    if pkt[0] >> 4 == 4:
        return pkt[9]
    return pkt[6] if start == 40 else -1


def decode_frame(
    frame: bytes | bytearray | memoryview, stats: OffloadStats, *, vectorised: bool = True
) -> list[bytes]:
    """Packets carried by one frame read from an IFF_VNET_HDR fd; garbage gives [] and a count.
    `vectorised=False` never uses numpy (see split_gso)."""
    stats.frames_in += 1
    if len(frame) <= VNET_HDR_LEN:
        stats.dropped["short_frame"] += 1
        return []
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(frame)
    pkt = memoryview(frame)[VNET_HDR_LEN:]
    if gso_type == GSO_NONE:
        if flags & F_NEEDS_CSUM:
            done = _complete_csum(pkt, csum_start, csum_offset, stats)
            if done is None:
                return []
            stats.segments_out += 1
            return [done]
        stats.segments_out += 1
        return [bytes(pkt)]
    segs = split_gso(
        pkt,
        gso_type=gso_type,
        gso_size=gso_size,
        csum_start=csum_start,
        csum_offset=csum_offset,
        stats=stats,
        vectorised=vectorised,
    )
    if segs:
        stats.gso_frames_in += 1
        stats.segments_out += len(segs)
    return segs


def _bad(stats: OffloadStats, reason: str) -> list[bytes]:
    stats.dropped[reason] += 1
    return []


def split_gso(
    pkt: memoryview,
    *,
    gso_type: int,
    gso_size: int,
    csum_start: int,
    csum_offset: int,
    stats: OffloadStats,
    vectorised: bool = True,
) -> list[bytes]:
    """Split one TCP/UDP GSO super-packet (without its vnet header) into full segments.

    Header lengths come from the packet itself (`hdr_len` is not trusted: on the forward path
    it can cover the whole first segment). With numpy, `vectorised` and at least
    VECTOR_MIN_SEGMENTS segments, all segments are built at once in one 2-D array (see
    `_split_numpy`); otherwise one by one (`_split_plain`): the same bytes either way.
    """
    n = len(pkt)
    if gso_type & GSO_ECN or gso_type not in (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4):
        return _bad(stats, "bad_gso_type")
    if n < 28 or gso_size == 0:
        return _bad(stats, "bad_gso")
    version = pkt[0] >> 4
    iph = csum_start
    is_tcp = gso_type != GSO_UDP_L4
    proto = PROTO_TCP if is_tcp else PROTO_UDP
    if version == 4 and gso_type != GSO_TCPV6:
        if iph != (pkt[0] & 0x0F) * 4 or iph < 20 or pkt[9] != proto:
            return _bad(stats, "bad_gso_header")
        if pkt[6] & 0x3F or pkt[7]:
            return _bad(stats, "bad_gso_fragment")
        addr_at = 12
    elif version == 6 and gso_type != GSO_TCPV4:
        # With extension headers csum_start lies beyond 40: it must be where the chain ends
        # (copied as is into every segment), never just taken on trust.
        if ipv6_l4_offset(pkt) != (iph, proto):
            return _bad(stats, "bad_gso_header")
        addr_at = 8
    else:
        return _bad(stats, "bad_gso_version")
    if csum_offset != (16 if is_tcp else 6) or iph + (20 if is_tcp else 8) > n:
        return _bad(stats, "bad_gso_header")
    if is_tcp:
        thl = (pkt[iph + 12] >> 4) * 4
        if thl < 20:
            return _bad(stats, "bad_gso_header")
    else:
        thl = 8
    hl = iph + thl
    plen = n - hl
    if plen <= 0:
        return _bad(stats, "bad_gso_header")
    nseg = -(-plen // gso_size)
    if nseg > MAX_SEGMENTS:
        return _bad(stats, "too_many_segments")
    if nseg * hl + plen > MAX_SPLIT_BYTES:
        return _bad(stats, "split_too_large")
    last = plen - (nseg - 1) * gso_size
    seg_len = hl + (gso_size if nseg > 1 else last)  # a gso_size beyond the payload is harmless
    if seg_len > 0xFFFF:
        return _bad(stats, "bad_gso")

    # Header template with the per-segment fields that enter checksums zeroed.
    tmpl = bytearray(pkt[:hl])
    tmpl[iph + csum_offset] = tmpl[iph + csum_offset + 1] = 0
    if version == 4:
        tmpl[2:6] = bytes(4)  # total length, ID
        tmpl[10:12] = bytes(2)  # header checksum
    addr_len = 8 if version == 4 else 32
    # The pseudo-header's addresses and protocol (its length differs per segment).
    const = ones_complement_sum(pkt[addr_at : addr_at + addr_len]) + proto
    shape = _Shape(version, iph, thl, hl, is_tcp, csum_offset, gso_size, nseg, last, const)
    if vectorised and nseg >= VECTOR_MIN_SEGMENTS and have_numpy():
        return _split_numpy(pkt, tmpl, shape)
    return _split_plain(pkt, tmpl, shape)


@dataclass(frozen=True, slots=True)
class _Shape:
    """What split_gso found out about a valid super-packet, for the two builders."""

    version: int
    iph: int  # IP header length (to the L4 header)
    thl: int  # L4 header length
    hl: int  # iph + thl
    tcp: bool
    csum_offset: int
    gso_size: int
    nseg: int
    last: int  # payload bytes of the last segment
    const: int  # one's-complement sum of the pseudo-header's addresses and protocol


def _split_plain(pkt: memoryview, tmpl: bytearray, s: _Shape) -> list[bytes]:
    """The segments one by one: header from the template, fields, checksums by bignum sum."""
    iph, hl, gso_size, nseg = s.iph, s.hl, s.gso_size, s.nseg
    at = iph + s.csum_offset
    seq0 = int.from_bytes(pkt[iph + 4 : iph + 8], "big") if s.tcp else 0
    id0 = (pkt[4] << 8) | pkt[5]
    flags = pkt[iph + 13] if s.tcp else 0
    out: list[bytes] = []
    for k in range(nseg):
        size = gso_size if k < nseg - 1 else s.last
        l4len = s.thl + size
        start = hl + k * gso_size
        seg = tmpl + pkt[start : start + size]
        if s.version == 4:
            _U16.pack_into(seg, 2, iph + l4len)
            _U16.pack_into(seg, 4, (id0 + k) & 0xFFFF)
            _U16.pack_into(seg, 10, ~ones_complement_sum(memoryview(seg)[:iph]) & 0xFFFF)
        else:
            _U16.pack_into(seg, 4, l4len + iph - 40)
        if s.tcp:
            _U32.pack_into(seg, iph + 4, (seq0 + k * gso_size) & 0xFFFFFFFF)
            # FIN and PSH only on the last segment.
            seg[iph + 13] = flags if k == nseg - 1 else flags & ~(TCP_FIN | TCP_PSH)
        else:
            _U16.pack_into(seg, iph + 4, l4len)
        csum = ~ones_complement_sum(memoryview(seg)[iph:], s.const + l4len) & 0xFFFF
        if not s.tcp and csum == 0:
            csum = 0xFFFF  # a zero checksum is sent as 0xFFFF in UDP
        _U16.pack_into(seg, at, csum)
        out.append(bytes(seg))
    return out


def _split_numpy(pkt: memoryview, tmpl: bytearray, s: _Shape) -> list[bytes]:
    """All segments at once in one 2-D array: the header template is broadcast into every
    row, per-segment fields are written as columns, and every checksum comes from one
    row-wise sum."""
    import numpy as np  # noqa: PLC0415 (the `pure` extra, imported on first use)

    u64 = np.uint64
    version, iph, thl, hl, is_tcp = s.version, s.iph, s.thl, s.hl, s.tcp
    gso_size, nseg, last = s.gso_size, s.nseg, s.last
    seg_len = hl + (gso_size if nseg > 1 else last)  # a gso_size beyond the payload is harmless
    stride = (seg_len + 3) & ~3  # rows start u32-aligned for the checksum sums
    ip_base = ones_complement_sum(tmpl[:iph]) if version == 4 else 0

    src = np.frombuffer(pkt, np.uint8)
    buf = np.empty((nseg, stride), np.uint8)
    buf[:, :hl] = np.frombuffer(tmpl, np.uint8)
    if nseg > 1:
        buf[: nseg - 1, hl:seg_len] = src[hl : hl + (nseg - 1) * gso_size].reshape(
            nseg - 1, gso_size
        )
    buf[nseg - 1, hl : hl + last] = src[hl + (nseg - 1) * gso_size :]
    buf[nseg - 1, hl + last :] = 0
    if stride > seg_len:
        buf[: nseg - 1, seg_len:] = 0

    words = buf.view(">u2")  # field writes; iph and thl are multiples of 4
    # uint64 arrays with plain Python ints: NumPy keeps uint64 (NEP 50), without building a
    # NumPy scalar per constant.
    i = np.arange(nseg, dtype=u64)
    l4len = np.full(nseg, thl + gso_size, dtype=u64)
    l4len[-1] = thl + last
    t = iph // 2
    if is_tcp:
        seq0 = int.from_bytes(pkt[iph + 4 : iph + 8], "big")
        buf.view(">u4")[:, iph // 4 + 1] = (i * gso_size + seq0) & 0xFFFFFFFF
        if nseg > 1:
            buf[: nseg - 1, iph + 13] = pkt[iph + 13] & ~(TCP_FIN | TCP_PSH)
    else:
        words[:, t + 2] = l4len
    # Checksums by congruence: 2**16 == 1 (mod 0xffff), so a sum of native u32 words is the
    # one's-complement sum up to a byte swap, which is a multiplication by 256 (mod 0xffff).
    # (Widening first and summing after is several times faster than sum(dtype=uint64).)
    rows = buf.view(np.uint32)[:, iph // 4 :].astype(u64).sum(axis=1)
    m = (rows * SWAP + (l4len + s.const)) % 0xFFFF
    if is_tcp:
        words[:, t + 8] = (0xFFFF - m) % 0xFFFF
    else:
        words[:, t + 3] = 0xFFFF - m  # a zero checksum is sent as 0xFFFF in UDP
    if version == 4:
        tot = l4len + iph
        ids = (i + ((pkt[4] << 8) | pkt[5])) & 0xFFFF
        words[:, 1] = tot
        words[:, 2] = ids
        words[:, 5] = (0xFFFF - (tot + ids + ip_base) % 0xFFFF) % 0xFFFF
    else:
        words[:, 2] = l4len + (iph - 40)

    data = buf.tobytes()
    out = [data[o : o + seg_len] for o in range(0, (nseg - 1) * stride, stride)]
    o = (nseg - 1) * stride
    out.append(data[o : o + hl + last])
    return out


def decode_frames(
    frames: Iterable[bytes | bytearray | memoryview],
    stats: OffloadStats,
    *,
    vectorised: bool = True,
) -> list[bytes]:
    """`decode_frame` over a batch, concatenated in order."""
    out: list[bytes] = []
    for frame in frames:
        out.extend(decode_frame(frame, stats, vectorised=vectorised))
    return out
