"""The virtio_net_hdr write side: coalesce a batch of packets into GSO frames the way GRO would.

With numpy (the `pure` extra) the common TCP/IPv4 batch is decided and the merged packets'
checksums verified as array operations; without it the per-packet loop and a per-packet
checksum do the same. numpy is imported on first use (the native data path never comes here).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

from wiretun.packet import PROTO_TCP, PROTO_UDP, internet_checksum, ones_complement_sum
from wiretun.tun.gso import (
    F_NEEDS_CSUM,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    SWAP,
    TCP_ACK,
    TCP_PSH,
    VNET_HDR,
    ZERO_VNET_HDR,
    OffloadStats,
    fold32,
    have_numpy,
)

if TYPE_CHECKING:
    import numpy as np

MAX_COALESCED_LEN = 0xFFFF  # IP length of a merged packet; the kernel's gro_max_size is 64 KB
UDP_MAX_SEGMENTS = 64  # the kernel's limit before 6.x raised it to 128: stay under both
# Below this many packets the vectorised path's fixed cost (~50 us of numpy calls) exceeds
# what it saves over the per-packet loop (~0.8 us a packet; scripts/offload_bench.py).
VECTOR_MIN_BATCH = 32

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
        "m_ack",
        "m_psh",
        "next_id",
        "next_seq",
        "opts",
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
        # Bytes 8..16 of every merged TCP header must match these (the flags byte being ACK
        # or ACK|PSH): ACK number, data offset, flags, window. Options must match too.
        self.m_ack = self.m_psh = b""
        if tcp:
            head = bytearray(p[iph + 8 : iph + 16])
            head[5] = TCP_ACK
            self.m_ack = bytes(head)
            head[5] = TCP_ACK | TCP_PSH
            self.m_psh = bytes(head)
        self.opts = p[iph + 20 : hl]


def _ip_id_ok(item: _Item, p: bytes) -> bool:
    """IPv4 IDs must advance by one per segment or, for DF packets, stay fixed (as in GRO)."""
    ip_id = (p[4] << 8) | p[5]
    if item.id_step < 0:
        if ip_id == (item.next_id + 1) & 0xFFFF:
            item.id_step = 1
        elif ip_id == item.next_id and p[6] & 0x40:
            item.id_step = 0
        else:
            return False
    elif ip_id != (item.next_id + item.id_step) & 0xFFFF:
        return False
    item.next_id = ip_id
    return True


class _Run:
    """A merged item found by the vectorised path: the fields `_emit` and `_verify` read."""

    __slots__ = ("count", "first", "gso", "hl", "iph", "packets", "psh", "tcp", "total")

    def __init__(self, packets: Sequence[bytes], hl: int, total: int, psh: bool) -> None:
        self.first = packets[0]
        self.packets = packets
        self.count = len(packets)
        self.iph = 20
        self.hl = hl
        self.tcp = True
        self.psh = psh
        self.total = total
        self.gso = len(self.first) - hl


def _emit(item: _Item | _Run) -> bytes:
    """The merged packet with a GSO header and a CHECKSUM_PARTIAL L4 checksum field."""
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
    # The field holds the folded pseudo-header sum, not its complement: the kernel finishes it.
    _U16.pack_into(hdr, iph + csum_offset, fold32(ones_complement_sum(addrs) + proto + l4len))
    vnet = VNET_HDR.pack(F_NEEDS_CSUM, gso_type, hl, item.gso, iph, csum_offset)
    parts: list[bytes | bytearray | memoryview] = [vnet, hdr, memoryview(first)[hl:]]
    parts.extend(memoryview(q)[hl:] for q in item.packets[1:])
    return b"".join(parts)


def coalesce(
    packets: Sequence[bytes],
    stats: OffloadStats,
    *,
    udp: bool = False,
    verify: bool = True,
    vectorised: bool = True,
) -> list[bytes]:
    """Frames (vnet header + packet) for a batch, merging consecutive segments of a flow.

    A packet only ever joins the newest item of its flow, and any other packet of the flow
    ends that item, so per-flow order is kept. The merge rules follow the kernel's GRO: TCP
    flags exactly ACK or ACK|PSH (PSH ends an item), equal ACK number, window, options, TOS/
    traffic class, TTL/hop limit and DF, sequence-adjacent, IPv4 IDs consecutive, equal
    payload sizes with only the last smaller, at most 64 KB. UDP merges only with `udp=True`
    (the kernel accepted USO), at most 64 datagrams. Checksums must be valid (the kernel
    trusts CHECKSUM_PARTIAL): they are verified for all merged packets afterwards (in one
    vectorised pass with numpy), and an item holding a bad one is written unmerged instead.
    `vectorised=False` (or no numpy) decides and verifies packet by packet: same frames.

    `verify=False` skips that pass, for packets whose integrity is already established: the
    WireGuard tunnel's packets were authenticated by the peer's AEAD, the same reason the
    kernel's WireGuard marks them CHECKSUM_UNNECESSARY. A bad checksum there is the peer's
    own doing, and the kernel then computes a valid one over the merged payload.
    """
    stats.packets_in += len(packets)
    vectorised = vectorised and have_numpy()
    items = _coalesce_tcp4(packets) if vectorised and len(packets) >= VECTOR_MIN_BATCH else None
    out = _coalesce_loop(packets, udp) if items is None else items
    return _frames(out, stats, verify, vectorised)


def _coalesce_loop(packets: Sequence[bytes], udp: bool) -> list[_Item | bytes]:
    """`coalesce`'s items, deciding packet by packet (any batch)."""
    out: list[_Item | bytes] = []
    current: dict[bytes, _Item] = {}
    for p in packets:
        n = len(p)
        if n < 28:
            out.append(p)
            continue
        b0 = p[0]
        if b0 == 0x45:
            if p[6] & 0x3F or p[7] or ((p[2] << 8) | p[3]) != n:
                out.append(p)
                continue
            proto, iph = p[9], 20
            key = p[12:24]
        elif b0 >> 4 == 6 and n >= 48 and ((p[4] << 8) | p[5]) == n - 40:
            proto, iph = p[6], 40
            key = p[8:44]
        else:
            out.append(p)
            continue
        if proto == PROTO_TCP and n >= iph + 20:
            flags = p[iph + 13]
            hl = iph + (p[iph + 12] >> 4) * 4
            if (flags != TCP_ACK and flags != TCP_ACK | TCP_PSH) or hl < iph + 20 or hl >= n:
                current.pop(key, None)  # e.g. a pure ACK or FIN: nothing may pass it
                out.append(p)
                continue
            tcp = True
            seq = int.from_bytes(p[iph + 4 : iph + 8], "big")
        elif proto == PROTO_UDP and udp:
            key += b"u"  # UDP and TCP flows never share an item
            hl = iph + 8
            if hl >= n or (iph == 20 and not (p[26] or p[27])):
                current.pop(key, None)  # empty, or no checksum to verify
                out.append(p)
                continue
            tcp = False
            seq = flags = 0
        else:
            out.append(p)
            continue
        item = current.get(key)
        if item is not None and not item.closed and hl == item.hl:
            plen = n - hl
            f = item.first
            if (
                plen <= item.gso
                and item.total + plen <= MAX_COALESCED_LEN
                and (
                    (p[1] == f[1] and p[8] == f[8] and not (p[6] ^ f[6]) & 0xE0)
                    if iph == 20
                    else (p[:4] == f[:4] and p[7] == f[7])
                )
                and (
                    (
                        seq == item.next_seq
                        and p[iph + 8 : iph + 16]
                        == (item.m_ack if flags == TCP_ACK else item.m_psh)
                        and (hl == iph + 20 or p[iph + 20 : hl] == item.opts)
                    )
                    if tcp
                    else item.count < UDP_MAX_SEGMENTS
                )
                and (iph != 20 or _ip_id_ok(item, p))
            ):
                item.packets.append(p)
                item.count += 1
                item.total += plen
                item.next_seq = (seq + plen) & 0xFFFFFFFF
                if plen < item.gso:
                    item.closed = True
                if flags & TCP_PSH:
                    item.psh = item.closed = True
                continue
        item = _Item(p, iph=iph, hl=hl, tcp=tcp, seq=seq, psh=bool(flags & TCP_PSH))
        current[key] = item
        out.append(item)

    return out


def _frames(
    out: Sequence[_Item | _Run | bytes], stats: OffloadStats, verify: bool, vectorised: bool
) -> list[bytes]:
    """The frames of coalesced items (merged ones checked first if `verify`) and loners."""
    merged = [o for o in out if not isinstance(o, bytes) and o.count > 1]
    bad: set[_Item | _Run] = set()
    if verify and merged:
        bad = _verify(merged) if vectorised else _verify_plain(merged)
    frames: list[bytes] = []
    for o in out:
        if isinstance(o, bytes):
            frames.append(ZERO_VNET_HDR + o)
        elif o.count == 1:
            frames.append(ZERO_VNET_HDR + o.first)
        elif o in bad:
            frames.extend(ZERO_VNET_HDR + q for q in o.packets)
        else:
            frames.append(_emit(o))
            stats.gso_frames_out += 1
            stats.coalesced += o.count - 1
    stats.frames_out += len(frames)
    return frames


# Header bytes the vectorised path looks at: IPv4 without options + the longest TCP header.
_W = 80


def _same_mask(hl: int) -> np.ndarray:
    """1s at the bytes every packet of a merged item has in common, for header length `hl`:
    IPv4 version/IHL, TOS, flags/fragment, TTL, protocol, addresses, ports, ACK number, data
    offset, window and TCP options; zeros at lengths, IDs, checksums, sequence, TCP flags,
    urgent pointer and payload."""
    import numpy as np  # noqa: PLC0415 (the `pure` extra, imported on first use)

    keep = [0, 1, 6, 7, 8, 9, *range(12, 24), *range(28, 33), 34, 35, *range(40, hl)]
    mask = np.zeros(_W, np.uint8)
    mask[keep] = 0xFF
    return mask


class _Tables:
    """The vectorised path's constant arrays, built once on first use."""

    def __init__(self) -> None:
        import numpy as np  # noqa: PLC0415

        self.row = np.dtype((np.void, _W))
        self.masks = {hl: _same_mask(hl) for hl in range(40, _W + 1, 4)}
        self.eligible_cols = np.array([0, 6, 7, 9])
        self.eligible_mask = np.array([0xFF, 0x3F, 0xFF, 0xFF], np.uint8)
        self.eligible = np.array([0x45, 0, 0, PROTO_TCP], np.uint8)
        self.fields = np.array([2, 3, 4, 5, 24, 25, 26, 27])  # total length, ID, sequence


@functools.cache
def _tables() -> _Tables:
    return _Tables()


def _coalesce_tcp4(packets: Sequence[bytes]) -> list[_Run | bytes] | None:
    """`coalesce`'s items for the common batch, with the per-packet header checks done as
    array operations: every packet IPv4 (no options, not fragmented, length right) TCP with
    flags ACK or ACK|PSH, one header length, payload, each flow's packets adjacent. None for
    any other batch (the general loop then decides): for these batches both give the same
    frames."""
    import numpy as np  # noqa: PLC0415

    n = len(packets)
    first = packets[0]
    if len(first) <= _W or first[0] != 0x45:
        return None
    hl = 20 + (first[32] >> 4) * 4
    lens = np.fromiter(map(len, packets), dtype=np.int64, count=n)
    if int(lens.min()) <= _W or hl < 40:
        return None
    tb = _tables()
    h = np.frombuffer(b"".join([p[:_W] for p in packets]), np.uint8).reshape(n, _W)
    sig = (h & tb.masks[hl]).view(tb.row)[:, 0]
    same = sig[1:] == sig[:-1]
    if not same.all() and (
        (h[:, 32] != first[32]).any()
        or not ((h[:, tb.eligible_cols] & tb.eligible_mask) == tb.eligible).all()
    ):
        return None
    if first[6] & 0x3F or first[7] or first[9] != PROTO_TCP:
        return None
    flags = h[:, 33]
    if not ((flags | TCP_PSH) == TCP_ACK | TCP_PSH).all():
        return None
    f = np.ascontiguousarray(h[:, tb.fields]).view(">u2").astype(np.int64)
    if not (f[:, 0] == lens).all():
        return None
    plen = lens - hl
    seq = f[:, 2] << 16 | f[:, 3]
    d = (f[1:, 1] - f[:-1, 1]) & 0xFFFF
    joins = (
        same
        & (seq[1:] == (seq[:-1] + plen[:-1]) & 0xFFFFFFFF)
        & ((d == 1) | ((d == 0) & (h[1:, 6] & 0x40 != 0)))
    )
    starts = np.flatnonzero(~joins) + 1
    if len(starts):
        # A flow that shows up again after another flow's packets would join its older
        # item in the general loop: leave such batches to it.
        keys = [first[12:24]]
        for i in starts.tolist():
            key = packets[i][12:24]
            if key != keys[-1]:
                keys.append(key)
        if len(set(keys)) != len(keys):
            return None
    psh = flags & TCP_PSH
    # Where a stretch of uniform packets ends: no join, PSH before, size or ID step change.
    edge = ~joins | (psh[:-1] != 0) | (plen[1:] != plen[:-1])
    edge[1:] |= d[1:] != d[:-1]
    return _runs(packets, joins=joins.tolist(), plen=plen.tolist(), steps=d.tolist(),
                 psh=psh.tolist(), hl=hl, edges=(np.flatnonzero(edge) + 1).tolist())  # fmt: skip


def _runs(
    packets: Sequence[bytes],
    *,
    joins: list[bool],
    plen: list[int],
    steps: list[int],
    psh: list[int],
    hl: int,
    edges: list[int],
) -> list[_Run | bytes]:
    """Cut adjacent joinable packets into items with the rules that depend on the item so far:
    equal sizes with only the last smaller, PSH last, one IPv4 ID step, at most 64 KB.

    Between `edges` packets are uniform (joined, equal size, same ID step, no PSH but maybe
    on the last), so whole stretches are taken at once; the rules run per packet elsewhere.
    """
    out: list[_Run | bytes] = []
    n = len(packets)
    edges.append(n)
    e = 0  # index into edges: the first edge beyond the current item's start
    i = 0
    while i < n:
        while edges[e] <= i:
            e += 1
        gso = plen[i]
        total = hl + gso
        closed = bool(psh[i])
        step = -1
        j = i + 1
        if not closed and edges[e] > j:
            j = min(edges[e], i + (MAX_COALESCED_LEN - hl) // gso)
            total = hl + gso * (j - i)
            if j - i > 1:
                step = steps[i]
            closed = bool(psh[j - 1])
        while j < n and not closed and joins[j - 1]:
            pl = plen[j]
            if pl > gso or total + pl > MAX_COALESCED_LEN:
                break
            if step < 0:
                step = steps[j - 1]
            elif steps[j - 1] != step:
                break
            total += pl
            closed = pl < gso or bool(psh[j])
            j += 1
        if j - i == 1:
            out.append(packets[i])
        else:
            out.append(_Run(packets[i:j], hl, total, bool(psh[j - 1])))
        i = j
    return out


def _verify(items: Sequence[_Item | _Run]) -> set[_Item | _Run]:
    """The items holding a packet whose L4 checksum does not verify: one vectorised pass.

    The pseudo-header addresses sit right before the L4 header in both IP versions, so each
    packet is summed from its source address to its end (u32-padded, joined, `reduceat`),
    plus protocol and L4 length. Native u32 sums equal big-endian u16 sums times SWAP
    (mod 0xffff), and a valid packet sums to 0xffff, i.e. to 0 (mod 0xffff).
    """
    import numpy as np  # noqa: PLC0415

    if not items:
        return set()
    pk = [q for item in items for q in item.packets]
    counts = np.array([item.count for item in items], dtype=np.int64)
    lens = np.fromiter(map(len, pk), dtype=np.int64, count=len(pk))
    if (lens & 3).any():
        data = b"".join([x for q in pk for x in (q, _PADS[len(q) & 3])])
        padded = (lens + 3) & ~3
    else:
        data = b"".join(pk)
        padded = lens
    starts = np.cumsum(padded) - padded
    addr_at = np.repeat(np.array([12 if it.iph == 20 else 8 for it in items]), counts)
    idx = np.empty(2 * len(pk) - 1, dtype=np.int64)
    idx[0::2] = (starts + addr_at) >> 2
    idx[1::2] = starts[1:] >> 2
    sums = np.add.reduceat(np.frombuffer(data, np.uint32), idx, dtype=np.uint64)[::2]
    base = np.repeat(
        np.array([(PROTO_TCP if it.tcp else PROTO_UDP) - it.iph for it in items]), counts
    )
    extra = (base + lens).astype(np.uint64)
    wrong = ((sums * np.uint64(SWAP) + extra) % np.uint64(0xFFFF)) != 0
    if not wrong.any():
        return set()
    ends = np.cumsum(counts)
    per_item = np.add.reduceat(wrong, ends - counts)
    return {it for it, w in zip(items, per_item.tolist(), strict=True) if w}


def _verify_plain(items: Sequence[_Item | _Run]) -> set[_Item | _Run]:
    """`_verify` packet by packet: each one's L4 checksum over its pseudo-header."""
    bad: set[_Item | _Run] = set()
    for item in items:
        proto = PROTO_TCP if item.tcp else PROTO_UDP
        addr_at = 12 if item.iph == 20 else 8
        for q in item.packets:
            # From the source address to the end: the addresses end where the L4 header
            # starts (merged items have no IPv4 options or IPv6 extension headers).
            total = ones_complement_sum(memoryview(q)[addr_at:], proto + len(q) - item.iph)
            if total != 0xFFFF:  # a valid packet sums to 0 (mod 0xffff)
                bad.add(item)
                break
    return bad
