#!/usr/bin/env python3
"""Per-segment CPU of the tunnel's data path without syscalls: what one process does per TCP
segment when sending (TUN GSO frame -> split -> seal -> UDP GSO groups) and when receiving
(GRO buffer views -> open -> coalesce -> TUN frames), over an in-memory WireGuard session.

    .venv/bin/python scripts/datapath_bench.py [--batches 300] [--rounds 5]
    PYTHONPATH=/tmp/old/src .venv/bin/python scripts/datapath_bench.py   # another tree

Segments are 1368-byte payloads with timestamps (MTU 1420), three 64 KB super-packets per
batch, as the kernel hands them to a TUN with TSO. Best batch of all rounds, in us/segment.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from time import perf_counter

sys.path.insert(0, str(Path(__file__).parent.parent))

from scripts.offload_bench import tcp_packet
from wiretun.testing.wgpair import WgPair, make_pair
from wiretun.tun.offload import OffloadCodec, OffloadStats, coalesce
from wiretun.tunnel.udp import GSO_MAX_BYTES, gso_groups

MSS = 1368
PER_FRAME = 47  # segments of one 64 KB super-packet at this MSS


def established() -> WgPair:
    pair = make_pair(seed=11)
    pair.a_to_b(b"hello")
    pair.net.roundtrip()
    pair.b_to_a(b"hello")
    pair.net.roundtrip()
    assert pair.delivered_to(pair.b) and pair.delivered_to(pair.a), "no session"
    return pair


def tso_frames(count: int) -> list[bytes]:
    """`count` TSO frames (vnet header + super-packet) as the kernel would write them."""
    segs = [tcp_packet(False, bytes([i & 0xFF]) * MSS, 1000 + i * MSS, 7 + i)
            for i in range(count * PER_FRAME)]  # fmt: skip
    frames = coalesce(segs, OffloadStats())
    assert len(frames) == count, len(frames)
    return frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=3, help="super-packets per batch")
    args = parser.parse_args(argv)
    pair = established()
    now = pair.clock.now
    frames = tso_frames(args.frames)
    split_codec = OffloadCodec()
    merge_codec = OffloadCodec(verify=False)
    src = pair.a_addr
    best = {k: float("inf") for k in ("split", "seal", "groups", "open", "coalesce")}
    nseg = 0
    for _ in range(args.rounds * args.batches):
        t0 = perf_counter()
        packets: list[bytes] = []
        for f in frames:
            packets += split_codec.decode(f)
        t1 = perf_counter()
        pair.a.send_packets(packets, now)
        out = pair.a.datagrams_to_send()
        t2 = perf_counter()
        groups = [gso_groups(dgrams, GSO_MAX_BYTES[socket.AF_INET]) for _, dgrams in out]
        t3 = perf_counter()
        # The receiver sees GRO buffers: memoryviews of one bytes per <= 64 datagrams.
        wire = []
        for _, g in groups[0]:
            view = memoryview(b"".join(g))
            size = len(g[0])
            wire += [(view[i : i + size], src) for i in range(0, len(view), size)]
        t4 = perf_counter()
        delivered = pair.b.receive_datagrams(wire, now)
        t5 = perf_counter()
        merge_codec.encode(delivered)
        t6 = perf_counter()
        nseg = len(packets)
        assert len(delivered) == nseg, pair.b.stats().drops
        for key, dt in (("split", t1 - t0), ("seal", t2 - t1), ("groups", t3 - t2),
                        ("open", t5 - t4), ("coalesce", t6 - t5)):  # fmt: skip
            best[key] = min(best[key], dt / nseg)
    send = best["split"] + best["seal"] + best["groups"]
    recv = best["open"] + best["coalesce"]
    print(f"{nseg} segments per batch; best of {args.rounds * args.batches} batches, us/segment")
    for key, value in best.items():
        print(f"  {key:9} {value * 1e6:6.3f}")
    print(f"  send     {send * 1e6:6.3f}\n  receive  {recv * 1e6:6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
