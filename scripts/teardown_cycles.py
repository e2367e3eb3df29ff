#!/usr/bin/env python3
"""Start/SIGTERM cycles of `wiretun up` in a throwaway namespace: per-cycle times and leaks.

    .venv/bin/python scripts/teardown_cycles.py [--cycles 20] [--kill]

Needs root. Exits 1 if a cycle failed to exit 0 or left a device, rule, route, socket or
pid file behind. With --kill, each cycle is a full tunnel (Table = auto: policy rules, a
fwmark table, nftables) ended by SIGKILL, and the next `up` must remove what it left (only
it cleans); the rules must be the same in every cycle and a last SIGTERM must leave nothing.
Times are wall-clock on a possibly shared machine: read them as a profile
of where a cycle spends its time, not as a benchmark.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

# The scenarios live with the tests (tests/scenarios), as the fuzz harnesses do.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from scenarios.cycles import run_cycles, run_kill_cycles
from wiretun.lab.netns import Topology


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--kill", action="store_true", help="SIGKILL-then-up cycles")
    args = parser.parse_args()
    if args.kill:
        return kill_cycles(args.cycles)
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


def kill_cycles(count: int) -> int:
    with Topology() as topo:
        a, b = topo.netns(), topo.netns()
        topo.veth(a, b, "192.168.241.1/24", "192.168.241.2/24")
        cycles, last, left = run_kill_cycles(a, count)
        foreign = a.run("ip", "rule").strip() != b.run("ip", "rule").strip()
    bad = 0
    first = cycles[0].rules
    for i, c in enumerate(cycles, 1):
        piled = c.rules != first
        gone = [x for x in c.after_kill if x.split()[0] in ("device", "udp")]
        flag = "  <-- rules differ: " + "; ".join(c.rules) if piled else ""
        flag += "  <-- " + ", ".join(gone) if gone else ""
        print(f"cycle {i:2d}: up {c.up_seconds:.2f}s, {len(c.rules)} rules while up, killed "
              f"({c.exit_code}), left for the next up: {len(c.after_kill)}{flag}")  # fmt: skip
        bad += bool(flag)
    print(f"last up + SIGTERM: exit {last}, left: {left or 'nothing'}"
          f"{', foreign rules in the namespace' if foreign else ''}")  # fmt: skip
    bad += bool(last != 0 or left or foreign)
    up = statistics.median(c.up_seconds for c in cycles)
    print(f"{len(cycles)} kill cycles: up median {up:.2f}s; {bad} bad")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
