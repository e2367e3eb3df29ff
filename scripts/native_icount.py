#!/usr/bin/env python3
"""Instructions per segment of the native data path, counted by valgrind's callgrind.

Instruction counts do not depend on the machine's load (wall-clock figures on a shared
2-core machine swing by tens of percent), so two builds can be compared exactly:

    .venv/bin/python scripts/native_icount.py [--calls 20]
    PYTHONPATH=/tmp/old/src .venv/bin/python scripts/native_icount.py   # another build

Seals three 64 KB TCP super-packets (47 segments of 1368 bytes each, MTU 1420) per call and
opens + coalesces the result into a reused Coalescer, as the tunnel does. The process runs
twice under callgrind, with --calls and 2 x --calls, and the difference is reported, so
the one-off costs (imports, first allocations) drop out. Columns: seal (the `seal` call),
open (`open_run`), finish (`Coalescer.finish`), and the OpenSSL calls among them.
Needs valgrind. Note that callgrind runs without AVX-512, so libcrypto takes its AVX2
ChaCha20/Poly1305 code there: the cipher's own count differs from the real CPU's, the
rest does not.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

FRAMES = 3
# Functions reported, by the name callgrind_annotate prints (inclusive instructions).
FUNCS = {
    "seal": "dp_seal",
    "open": "dp_open_run",
    "finish": "Coalescer_finish",
    "EVP_*Update": r"EVP_(En|De)cryptUpdate",
    "EVP_*Init_ex": r"EVP_(En|De)cryptInit_ex2?",
    "EVP_*Final_ex": r"EVP_(En|De)cryptFinal_ex",
    "EVP_CIPHER_CTX_ctrl": r"EVP_CIPHER_CTX_ctrl",
    "EVP_CIPHER_CTX_set_params": r"EVP_CIPHER_CTX_(set|get)_params",
}


def child(calls: int) -> None:
    """The measured work: `calls` seals and opens of the same batch."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_tun_offload import Flow, segments, super_frame
    from wiretun.datapath import NATIVE

    assert NATIVE is not None, "the native data path is not built"
    key = bytes(range(32))
    allow4 = bytes([10, 0, 0, 0, 8, 1, 0, 0])  # 10.0.0.0/8 allowed (the test flows' source)
    f = Flow()
    frames = [super_frame(f, segments(f, bytes(1368 * 47), 1368), 1368)] * FRAMES
    coalescer = NATIVE.coalescer(vnet=True)
    for _ in range(calls):
        buf, groups, used, _ = NATIVE.seal(frames, key, 7, 0, 1420, 65507, True)
        ring = bytearray(8192)
        opened = NATIVE.open_run(buf, 0, groups[0][0], key, 7, ring, 0, allow4, b"", coalescer)
        assert opened[2] == used, opened
        assert len(coalescer.finish()) == FRAMES
    print(f"segments {used}")


def measure(calls: int, out: str) -> tuple[int, dict[str, int]]:
    """(segments per call, inclusive instructions by FUNCS key) of one callgrind run."""
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
    cmd += [__file__, "--child", str(calls)]
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise SystemExit(f"the measured child failed:\n{run.stderr[-3000:]}")
    segs = int(re.search(r"^segments (\d+)$", run.stdout, re.M).group(1))  # type: ignore[union-attr]
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", out],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts = dict.fromkeys(FUNCS, 0)
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+\S*?:(\w+) \[", line)
        if not m:
            continue
        for key, pattern in FUNCS.items():
            if re.fullmatch(pattern, m.group(2)):
                counts[key] += int(m.group(1).replace(",", ""))
    return segs, counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        segs, one = measure(args.calls, os.path.join(tmp, "a.out"))
        _, two = measure(2 * args.calls, os.path.join(tmp, "b.out"))
    n = args.calls * segs
    print(f"instructions per segment ({segs} segments a call, {args.calls} calls counted):")
    for key in FUNCS:
        if two[key] or one[key]:
            print(f"  {key:26s} {(two[key] - one[key]) / n:8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
