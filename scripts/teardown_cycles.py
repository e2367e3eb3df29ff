#!/usr/bin/env python3
"""Start/SIGTERM cycles of `wiretun up` in a throwaway namespace: per-cycle times and leaks.

    .venv/bin/python scripts/teardown_cycles.py [--cycles 20]

Needs root. Exits 1 if a cycle failed to exit 0 or left a device, rule, route, socket or
pid file behind. Times are wall-clock on a possibly shared machine: read them as a profile
of where a cycle spends its time, not as a benchmark.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

# The scenarios live with the tests (tests/scenarios), as the fuzz harnesses do.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from scenarios.cycles import run_cycles
from wiretun.lab.netns import Topology


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    args = parser.parse_args()
    with Topology() as topo:
        a, b = topo.netns(), topo.netns()
        topo.veth(a, b, "192.168.241.1/24", "192.168.241.2/24")
        cycles = run_cycles(a, args.cycles)
    bad = 0
    for i, c in enumerate(cycles, 1):
        flag = "" if c.exit_code == 0 and not c.leftovers else "  <-- " + ", ".join(c.leftovers)
        print(f"cycle {i:2d}: up {c.up_seconds:.2f}s down {c.down_seconds:.2f}s "
              f"exit {c.exit_code}{flag}")  # fmt: skip
        bad += bool(flag)
    totals = [c.seconds for c in cycles]
    up = statistics.median(c.up_seconds for c in cycles)
    down = statistics.median(c.down_seconds for c in cycles)
    print(
        f"{len(cycles)} cycles: median {statistics.median(totals):.2f}s, max {max(totals):.2f}s;"
        f" up median {up:.2f}s, down median {down:.2f}s; {bad} bad"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
