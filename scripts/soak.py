#!/usr/bin/env python3
"""Soak wiretun<->wiretun: steady iperf3 UDP well below capacity, RSS of both daemons sampled.

    nice .venv/bin/python scripts/soak.py [--minutes 10] [--rate 200] [--every 10]

Needs root and iperf3. Prints the RSS curve, loss and reordering; exits 1 if either daemon's
RSS grew >= 5% from the first sample (taken after a warm-up), if a UDP queue is still full
at the end, or if any packet was lost or reordered.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The scenarios live with the tests (tests/scenarios), as the fuzz harnesses do.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from scenarios.soak import Sample, run_soak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=200, help="UDP rate, Mbit/s (default 200)")
    parser.add_argument("--every", type=float, default=10.0, help="RSS sample interval, s")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before sampling")
    args = parser.parse_args()

    def progress(s: Sample) -> None:
        print(f"  t={s.t:5.0f}s rss {s.rss_kib[0]} / {s.rss_kib[1]} KiB", flush=True)

    result = run_soak(
        args.minutes * 60,
        rate_mbps=args.rate,
        sample_every=args.every,
        warmup=args.warmup,
        progress=progress,
    )
    print(result.report())
    problems = result.problems()
    for p in problems:
        print(f"FAIL: {p}")
    if not problems:
        print("OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
