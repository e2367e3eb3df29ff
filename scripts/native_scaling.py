"""Per-segment cost of the data path backends, and how the native one scales over threads.

Seals 64 KB TCP super-packets (1368-byte segments, MTU 1420) and opens + coalesces the
result, per backend, in interleaved rounds; then runs the native seal and open in 1..N
threads at once (the GIL is released for the batch work) and reports segments per second
and the speed-up over one thread.

    .venv/bin/python scripts/native_scaling.py [--seconds 2] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from time import perf_counter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_tun_offload import Flow, segments, super_frame
from wiretun.datapath import NATIVE, PURE, Backend

KEY = bytes(range(32))
RECEIVER = 7
ALLOW4 = bytes([10, 0, 0, 0, 8, 1, 0, 0])  # 10.0.0.0/8 allowed (the test flows' source)
FRAMES_PER_CALL = 8


def workload(backend: Backend) -> tuple[Callable[[], int], Callable[[], int]]:
    """(seal once, open once): each returns the segments it handled."""
    f = Flow()
    # 47 full segments: every datagram the same size, so the sealed buffer is what one UDP GRO
    # receive of them looks like.
    frame = super_frame(f, segments(f, bytes(1368 * 47), 1368), 1368)
    frames = [frame] * FRAMES_PER_CALL
    buf, groups, used, _ = backend.seal(frames, KEY, RECEIVER, 0, 1420, 65507, True)
    size = groups[0][0]

    def seal() -> int:
        return backend.seal(frames, KEY, RECEIVER, 0, 1420, 65507, True)[2]

    def open_() -> int:
        ring = bytearray(8192)
        c = backend.coalescer(vnet=True)
        opened = backend.open_run(buf, 0, size, KEY, RECEIVER, ring, 0, ALLOW4, b"", c)[2]
        assert opened == used and len(c.finish()) == FRAMES_PER_CALL
        return opened

    return seal, open_


def rate(fn: Callable[[], int], seconds: float, threads: int) -> float:
    """Segments per second over all threads, each calling `fn` for `seconds`."""
    counts = [0] * threads
    start = threading.Barrier(threads + 1)

    def run(i: int) -> None:
        start.wait()
        end = perf_counter() + seconds
        n = 0
        while perf_counter() < end:
            n += fn()
        counts[i] = n

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    t0 = perf_counter()
    for w in workers:
        w.join()
    return sum(counts) / (perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if NATIVE is None:
        print("the native data path is not built", file=sys.stderr)
        return 1
    backends = {"native": workload(NATIVE), "pure": workload(PURE)}
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, (seal, open_) in backends.items():
            for what, fn in (("seal", seal), ("open+coalesce", open_)):
                key = f"{name} {what}"
                best[key] = max(best.get(key, 0.0), rate(fn, args.seconds / 2, 1))
    print("per segment, one thread (best of rounds):")
    for key, r in best.items():
        print(f"  {key:22s} {1e6 / r:6.2f} us")
    seal, open_ = backends["native"]
    print("native, threads at once (segments/s, speed-up over 1 thread):")
    for what, fn in (("seal", seal), ("open+coalesce", open_)):
        one = max(rate(fn, args.seconds, 1) for _ in range(args.rounds))
        for n in range(2, args.threads + 1):
            many = max(rate(fn, args.seconds, n) for _ in range(args.rounds))
            print(
                f"  {what:14s} 1: {one / 1e6:.3f} M  {n}: {many / 1e6:.3f} M  = {many / one:.2f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
