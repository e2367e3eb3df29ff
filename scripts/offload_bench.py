"""Per-segment cost of the TUN offload codec: split and coalesce of a 64 KB TCP super-packet.

Usage: .venv/bin/python scripts/offload_bench.py [--number N] [--repeat R] [--segments S]

Prints microseconds per segment (best of R runs of N calls each) for v4 and v6, next to two
baselines measured in the same run: a naive per-segment split (bytearray copy, pack_into,
one bignum checksum per segment) and the bare checksum costs (int.from_bytes % 0xffff per
segment vs one vectorised numpy sum for all segments). The machine is shared: compare the
ratios within one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import struct
import timeit
from collections.abc import Callable
from functools import partial

import numpy as np

from wiretun.packet import internet_checksum, ones_complement_sum
from wiretun.tun.gso import SWAP, VNET_HDR_LEN
from wiretun.tun.offload import OffloadStats, coalesce, split

SRC4, DST4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
SRC6, DST6 = bytes(15) + b"\x01", bytes(15) + b"\x02"


def tcp_packet(v6: bool, payload: bytes, seq: int, ip_id: int) -> bytes:
    """A valid TCP packet (ACK, 12 bytes of timestamp option, like Linux bulk traffic)."""
    opts = bytes([1, 1, 8, 10]) + bytes(8)
    l4len = 32 + len(payload)
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, seq, 1, 8 << 4, 0x10, 3000, 0, 0))
    tcp += opts + payload
    if v6:
        ip = struct.pack("!IHBB", 6 << 28, l4len, 6, 64) + SRC6 + DST6
        addrs = SRC6 + DST6
    else:
        iph = bytearray(struct.pack("!BBHHHBBH", 0x45, 0, 20 + l4len, ip_id, 0x4000, 64, 6, 0))
        iph += SRC4 + DST4
        struct.pack_into("!H", iph, 10, internet_checksum(iph))
        ip = bytes(iph)
        addrs = SRC4 + DST4
    pseudo = ones_complement_sum(addrs + struct.pack("!HH", 6, l4len))
    struct.pack_into("!H", tcp, 16, internet_checksum(tcp, pseudo))
    return ip + bytes(tcp)


def segments(v6: bool, count: int) -> list[bytes]:
    mss = 1428 if v6 else 1448  # 1500-byte MTU with timestamps
    data = np.random.default_rng(1).integers(0, 256, count * mss, dtype=np.uint8).tobytes()
    return [
        tcp_packet(v6, data[i * mss : (i + 1) * mss], 1000 + i * mss, 7 + i) for i in range(count)
    ]


def naive_split(frame: bytes) -> list[bytes]:
    """The straightforward per-segment loop the vectorised split replaces (TCPv4/v6 only)."""
    _, _, _, gso, iph, _ = struct.unpack_from("=BBHHHH", frame)
    pkt = frame[VNET_HDR_LEN:]
    hl = iph + (pkt[iph + 12] >> 4) * 4
    v4 = pkt[0] >> 4 == 4
    addrs = pkt[12:20] if v4 else pkt[8:40]
    seq0 = struct.unpack_from("!I", pkt, iph + 4)[0]
    out = []
    for i, at in enumerate(range(hl, len(pkt), gso)):
        chunk = pkt[at : at + gso]
        seg = bytearray(pkt[:hl]) + chunk
        if v4:
            struct.pack_into("!HH", seg, 2, len(seg), (pkt[4] << 8 | pkt[5]) + i)
            struct.pack_into("!H", seg, 10, 0)
            struct.pack_into("!H", seg, 10, internet_checksum(seg[:20]))
        else:
            struct.pack_into("!H", seg, 4, len(seg) - 40)
        struct.pack_into("!I", seg, iph + 4, (seq0 + i * gso) & 0xFFFFFFFF)
        struct.pack_into("!H", seg, iph + 16, 0)
        l4len = len(seg) - iph
        pseudo = ones_complement_sum(addrs + struct.pack("!HH", 6, l4len))
        struct.pack_into("!H", seg, iph + 16, internet_checksum(seg[iph:], pseudo))
        out.append(bytes(seg))
    return out


def best_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--segments", type=int, default=45, help="segments per super-packet")
    args = ap.parse_args()
    n, r = args.number, args.repeat
    print(f"{'case':<44} {'us/call':>9} {'us/segment':>11}")
    for v6 in (False, True):
        ver = "v6" if v6 else "v4"
        segs = segments(v6, args.segments)
        stats = OffloadStats()
        frames = coalesce(segs, stats)
        split_stats = stats
        assert len(frames) == 1 and stats.gso_frames_out == 1, "expected one super-packet"
        frame = frames[0]
        assert split(frame, stats) == segs and naive_split(frame) == segs
        nseg = len(segs)
        size = len(frame) - VNET_HDR_LEN
        rows = [
            (
                f"split {ver} ({nseg} x {len(segs[0])} B, {size} B)",
                partial(split, frame, split_stats),
            ),
            (f"naive split {ver} (per-segment bignum csum)", partial(naive_split, frame)),
            (
                f"coalesce {ver} ({nseg} packets -> 1 frame)",
                partial(coalesce, segs, split_stats),
            ),
        ]
        for name, fn in rows:
            t = best_us(fn, n, r)
            print(f"{name:<44} {t:9.1f} {t / nseg:11.3f}")
    # The checksum alone, the dominant per-segment cost: bignum per segment vs one numpy sum.
    payload = np.random.default_rng(2).integers(0, 256, 45 * 1448, dtype=np.uint8)
    chunks = [payload[i * 1448 : (i + 1) * 1448].tobytes() for i in range(45)]
    rows2 = payload.reshape(45, 1448).view(np.uint32)
    t_big = best_us(lambda: [int.from_bytes(c, "big") % 0xFFFF for c in chunks], n, r)
    t_np = best_us(
        lambda: (rows2.sum(axis=1, dtype=np.uint64) * np.uint64(SWAP)) % np.uint64(0xFFFF), n, r
    )
    print(f"{'checksum 45 x 1448 B, int.from_bytes % 0xffff':<44} {t_big:9.1f} {t_big / 45:11.3f}")
    print(f"{'checksum 45 x 1448 B, numpy u32 row sums':<44} {t_np:9.1f} {t_np / 45:11.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
