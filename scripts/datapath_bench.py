#!/usr/bin/env python3
"""Per-segment CPU of the tunnel's data path without syscalls: what one process does per TCP
segment when sending (TUN GSO frame -> split -> seal -> UDP GSO groups) and when receiving
(GRO buffer views -> open -> coalesce -> TUN frames), over an in-memory WireGuard session.

    .venv/bin/python scripts/datapath_bench.py [--batches 300] [--rounds 5] [--path P]
    PYTHONPATH=/tmp/old/src .venv/bin/python scripts/datapath_bench.py   # another tree

--path batch (the default) is what `wiretun up` runs with offloads on: Device.send_frames
and receive_gro over the data path backend (native unless WIRETUN_PURE=1), one UDP GRO
buffer per UDP_SEGMENT group. --path packets is the per-packet path (send_packets,
receive_datagrams, the offload codec in Python).

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
from wiretun.datapath import Backend, load
from wiretun.testing.wgpair import WgPair, make_pair
from wiretun.tun.offload import OffloadCodec, OffloadStats, coalesce
from wiretun.tunnel.udp import GSO_MAX_BYTES, gso_groups

MSS = 1368
PER_FRAME = 47  # segments of one 64 KB super-packet at this MSS


def established(datapath: Backend | None = None) -> WgPair:
    pair = make_pair(seed=11, datapath=datapath)
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
    parser.add_argument("--path", choices=("batch", "packets"), default="batch")
    args = parser.parse_args(argv)
    if args.path == "batch":
        return batch_path(args.frames, args.rounds * args.batches)
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


def batch_path(nframes: int, batches: int) -> int:
    """send_frames -> gso_to_send (seal) and receive_gro -> finish (open + coalesce)."""
    backend = load()
    pair = established(backend)
    now = pair.clock.now
    frames = tso_frames(nframes)
    src = pair.a_addr
    best = {"seal": float("inf"), "open": float("inf")}
    nseg = 0
    for _ in range(batches):
        t0 = perf_counter()
        pair.a.send_frames(frames, now, vnet=True)
        out = pair.a.gso_to_send()
        t1 = perf_counter()
        # The receiver's GRO buffers: one per UDP_SEGMENT group, as the kernel merges them.
        buffers = []
        for _, buf, groups in out:
            at = 0
            for size, nbytes in groups:
                buffers.append((buf[at : at + nbytes], size, src))
                at += nbytes
        coalescer = backend.coalescer(vnet=True)
        t2 = perf_counter()
        pair.b.receive_gro(buffers, now, coalescer)
        delivered = coalescer.finish()
        t3 = perf_counter()
        nseg = sum(-(-nbytes // size) for _, _, groups in out for size, nbytes in groups)
        assert len(delivered) == nframes, (len(delivered), pair.b.stats().drops)
        best["seal"] = min(best["seal"], (t1 - t0) / nseg)
        best["open"] = min(best["open"], (t3 - t2) / nseg)
    print(f"{backend.name} batch path: {nseg} segments per batch; best of {batches} batches")
    print(f"  send     {best['seal'] * 1e6:6.3f} us/segment (send_frames + gso_to_send)")
    print(f"  receive  {best['open'] * 1e6:6.3f} us/segment (receive_gro + finish)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
