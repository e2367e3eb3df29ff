"""The virtio_net_hdr write side: coalesce a batch of packets into GSO frames the way GRO would."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from wiretun.packet import PROTO_TCP, PROTO_UDP, internet_checksum, ones_complement_sum
from wiretun.tun.gso import (
    F_NEEDS_CSUM,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    TCP_ACK,
    TCP_PSH,
    VNET_HDR,
    ZERO_VNET_HDR,
    OffloadStats,
    fold32,
    fold_rows,
)

MAX_COALESCED_LEN = 0xFFFF  # IP length of a merged packet; the kernel's gro_max_size is 64 KB
UDP_MAX_SEGMENTS = 64  # the kernel's limit before 6.x raised it to 128: stay under both

_U16 = struct.Struct("!H")
_PADS = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")  # by len % 4, to keep u32 alignment


class _Item:
    """One output packet being grown: its first packet plus appended payloads."""

    __slots__ = (
        "closed",
        "count",
        "first",
        "gso",
        "hl",
        "id_step",
        "iph",
        "next_id",
        "next_seq",
        "packets",
        "psh",
        "tcp",
        "total",
    )

    def __init__(self, p: bytes, *, iph: int, hl: int, tcp: bool, seq: int, psh: bool) -> None:
        self.first = p
        self.packets = [p]
        self.iph = iph
        self.hl = hl
        self.tcp = tcp
        self.gso = len(p) - hl
        self.total = len(p)
        self.count = 1
        self.next_seq = (seq + self.gso) & 0xFFFFFFFF
        self.psh = psh
        self.closed = psh  # PSH may only end a merged packet
        self.id_step = -1  # IPv4 ID +1 per segment, or (with DF) fixed; set by the 2nd packet
        self.next_id = ((p[4] << 8) | p[5]) if iph == 20 else 0


def _ip_compatible(p: bytes, f: bytes, iph: int) -> bool:
    if iph == 20:
        # TOS, TTL and the DF/reserved bits must agree (MF/offset were excluded earlier).
        return p[1] == f[1] and p[8] == f[8] and not (p[6] ^ f[6]) & 0xE0
    # Version, traffic class and flow label, then hop limit.
    return p[:4] == f[:4] and p[7] == f[7]


def _ip_id_ok(item: _Item, p: bytes) -> bool:
    if item.iph != 20:
        return True
    ip_id = (p[4] << 8) | p[5]
    if item.id_step < 0:
        if ip_id == (item.next_id + 1) & 0xFFFF:
            item.id_step = 1
        elif ip_id == item.next_id and p[6] & 0x40:
            item.id_step = 0  # atomic datagrams may keep a fixed ID
        else:
            return False
        item.next_id = ip_id
        return True
    if ip_id != (item.next_id + item.id_step) & 0xFFFF:
        return False
    item.next_id = ip_id
    return True


def _checksums_valid(packets: list[bytes], addr_at: list[int], extra: list[int]) -> list[bool]:
    """Whether each packet's L4 checksum verifies, with one vectorised sum for the batch.

    The pseudo-header addresses sit right before the L4 header in both IP versions, so each
    packet is summed from its source address to its end; `extra` adds protocol and length.
    """
    pieces: list[bytes] = []
    idx: list[int] = []
    off = 0
    for p, a in zip(packets, addr_at, strict=True):
        if idx:
            idx.append(off >> 2)
        idx.append((off + a) >> 2)
        pad = _PADS[len(p) & 3]
        pieces.append(p)
        pieces.append(pad)
        off += len(p) + len(pad)
    words = np.frombuffer(b"".join(pieces), np.uint32)
    sums = np.add.reduceat(words, idx, dtype=np.uint64)[::2]
    total = fold_rows(sums) + np.asarray(extra, dtype=np.uint64)
    total = (total & np.uint64(0xFFFF)) + (total >> np.uint64(16))
    total = (total & np.uint64(0xFFFF)) + (total >> np.uint64(16))
    return (total == np.uint64(0xFFFF)).tolist()  # type: ignore[no-any-return]


def _emit(item: _Item) -> bytes:
    """The frame for a finished item: a zero header, or a GSO header and the merged packet."""
    if item.count == 1:
        return ZERO_VNET_HDR + item.first
    first, iph, hl, total = item.first, item.iph, item.hl, item.total
    hdr = bytearray(first[:hl])
    if iph == 20:
        _U16.pack_into(hdr, 2, total)
        hdr[10] = hdr[11] = 0
        _U16.pack_into(hdr, 10, internet_checksum(memoryview(hdr)[:20]))
        addrs = first[12:20]
        gso_type = GSO_TCPV4 if item.tcp else GSO_UDP_L4
    else:
        _U16.pack_into(hdr, 4, total - 40)
        addrs = first[8:40]
        gso_type = GSO_TCPV6 if item.tcp else GSO_UDP_L4
    l4len = total - iph
    if item.tcp:
        if item.psh:
            hdr[iph + 13] |= TCP_PSH
        csum_offset = 16
        proto = PROTO_TCP
    else:
        _U16.pack_into(hdr, iph + 4, l4len)
        csum_offset = 6
        proto = PROTO_UDP
    # CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum, not its complement.
    _U16.pack_into(hdr, iph + csum_offset, fold32(ones_complement_sum(addrs) + proto + l4len))
    vnet = VNET_HDR.pack(F_NEEDS_CSUM, gso_type, hl, item.gso, iph, csum_offset)
    parts: list[bytes | bytearray | memoryview] = [vnet, hdr, memoryview(first)[hl:]]
    parts.extend(memoryview(q)[hl:] for q in item.packets[1:])
    return b"".join(parts)


def coalesce(packets: Sequence[bytes], stats: OffloadStats, *, udp: bool = False) -> list[bytes]:
    """Frames (vnet header + packet) for a batch, merging consecutive segments of a flow.

    A packet only ever joins the newest item of its flow, so per-flow order is kept. The
    merge rules follow the kernel's GRO: TCP flags exactly ACK or ACK|PSH (PSH ends an item),
    equal ACK, window, options and IP header fields, sequence-adjacent, IPv4 IDs consecutive,
    equal payload sizes with only the last smaller, at most 64 KB, and valid checksums
    (checked in software, since CHECKSUM_PARTIAL makes the kernel trust them). UDP merges
    only with `udp=True` (the kernel accepted USO).
    """
    stats.packets_in += len(packets)
    # Pass 1: parse candidates. rec = (index, key, iph, hl, is_tcp, seq, flags)
    recs: list[tuple[int, bytes, int, int, bool, int, int]] = []
    seen: dict[bytes, int] = {}
    for k, p in enumerate(packets):
        n = len(p)
        if n < 28:
            continue
        b0 = p[0]
        if b0 == 0x45:
            if p[6] & 0x3F or p[7] or ((p[2] << 8) | p[3]) != n:
                continue
            proto, iph = p[9], 20
            key = p[12:24]
        elif b0 >> 4 == 6 and n >= 48:
            if ((p[4] << 8) | p[5]) != n - 40:
                continue
            proto, iph = p[6], 40
            key = p[8:44]
        else:
            continue
        if proto == PROTO_TCP:
            if n < iph + 20:
                continue
            flags = p[iph + 13]
            hl = iph + (p[iph + 12] >> 4) * 4
            if (flags != TCP_ACK and flags != TCP_ACK | TCP_PSH) or hl < iph + 20 or hl >= n:
                flags = -1  # same flow, not mergeable: it still ends the flow's item
            recs.append((k, key, iph, hl, True, int.from_bytes(p[iph + 4 : iph + 8], "big"), flags))
            seen[key] = seen.get(key, 0) + 1
        elif proto == PROTO_UDP and udp:
            hl = iph + 8
            flags = 0 if hl < n else -1
            if iph == 20 and p[26] == 0 and p[27] == 0:
                flags = -1  # no checksum to verify
            key += b"u"  # UDP and TCP flows never share an item
            recs.append((k, key, iph, hl, False, 0, flags))
            seen[key] = seen.get(key, 0) + 1

    # Checksums only matter for flows with something to merge with.
    check = [r for r in recs if r[6] >= 0 and seen[r[1]] > 1]
    valid: dict[int, bool] = {}
    if check:
        pk = [packets[r[0]] for r in check]
        ok = _checksums_valid(
            pk,
            [12 if r[2] == 20 else 8 for r in check],
            [
                (PROTO_TCP if r[4] else PROTO_UDP) + len(q) - r[2]
                for r, q in zip(check, pk, strict=True)
            ],
        )
        valid = {r[0]: v for r, v in zip(check, ok, strict=True)}

    # Pass 2: merge in order.
    out: list[_Item | bytes] = []
    current: dict[bytes, _Item] = {}
    ri = 0
    nrec = len(recs)
    for k, p in enumerate(packets):
        if ri == nrec or recs[ri][0] != k:
            out.append(p)
            continue
        _, key, iph, hl, tcp, seq, flags = recs[ri]
        ri += 1
        if flags < 0 or not valid.get(k, True):
            current.pop(key, None)
            out.append(p)
            continue
        item = current.get(key)
        if item is not None and _can_append(item, p, hl, tcp, seq):
            plen = len(p) - hl
            item.packets.append(p)
            item.count += 1
            item.total += plen
            item.next_seq = (seq + plen) & 0xFFFFFFFF
            if plen < item.gso:
                item.closed = True
            if tcp and flags & TCP_PSH:
                item.psh = item.closed = True
            stats.coalesced += 1
            continue
        item = _Item(p, iph=iph, hl=hl, tcp=tcp, seq=seq, psh=tcp and bool(flags & TCP_PSH))
        current[key] = item
        out.append(item)

    frames: list[bytes] = []
    for o in out:
        if isinstance(o, _Item):
            if o.count > 1:
                stats.gso_frames_out += 1
            frames.append(_emit(o))
        else:
            frames.append(ZERO_VNET_HDR + o)
    stats.frames_out += len(frames)
    return frames


def _can_append(item: _Item, p: bytes, hl: int, tcp: bool, seq: int) -> bool:
    if item.closed or hl != item.hl:
        return False
    plen = len(p) - hl
    if plen > item.gso or item.total + plen > MAX_COALESCED_LEN:
        return False
    f, iph = item.first, item.iph
    if not _ip_compatible(p, f, iph):
        return False
    if tcp:
        if seq != item.next_seq:
            return False
        # ACK number, data offset, window and options must match (flags were checked).
        if (
            p[iph + 8 : iph + 13] != f[iph + 8 : iph + 13]
            or p[iph + 14 : iph + 16] != f[iph + 14 : iph + 16]
            or p[iph + 20 : hl] != f[iph + 20 : hl]
        ):
            return False
    elif item.count >= UDP_MAX_SEGMENTS:
        return False
    return _ip_id_ok(item, p)
