"""Cost of Device.next_timer() and handle_timers() with many peers, next to the old scan.

Every peer gets a persistent keepalive (so each has a handshake retransmit and a keepalive
deadline armed), then rounds alternate: the Device's answer (a heap) and the scan over
every peer's timers that `next_timer()` used to be, each after one peer's deadline moved
(what a data batch does). The report is the median per call; `expire scan` is what an idle
`handle_timers()` cost before (every peer asked), `handle_timers` what it costs now.

    .venv/bin/python scripts/wg_timer_bench.py [--peers 10000] [--calls 200]
"""

from __future__ import annotations

import argparse
import statistics
from time import perf_counter

from wiretun.testing.wgpair import seeded_rng
from wiretun.wireguard import Device, Peer


def scan(peers: list[Peer]) -> float | None:
    """What next_timer() computed before the heap: the minimum over every peer."""
    deadlines = [d for p in peers if (d := p.timers.next_deadline()) is not None]
    return min(deadlines) if deadlines else None


def build(n: int) -> Device:
    rng = seeded_rng(7)
    dev = Device(rng(32), rng=rng)
    for i in range(n):
        key = rng(32)
        host = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        dev.add_peer(key, endpoint=(host, 51820), allowed_ips=[f"{host}/32"])
        dev.set_persistent_keepalive(key, 25, 0.0)  # arms timers, queues an initiation
    dev.datagrams_to_send()
    return dev


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--peers", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args(argv)
    head = ("peers", "scan", "next_timer", "ratio", "expire scan", "handle_timers")
    print("{:>6} {:>10} {:>11} {:>7} {:>12} {:>14}".format(*head))
    for n in args.peers:
        dev = build(n)
        peers = dev.peers
        heap_t: list[float] = []
        scan_t: list[float] = []
        now = 1.0
        for i in range(args.calls):
            peers[i % n].timers.authenticated_traversal(now)  # one deadline moved
            t0 = perf_counter()
            got = dev.next_timer()
            t1 = perf_counter()
            want = scan(peers)
            t2 = perf_counter()
            assert got == want, (got, want)
            heap_t.append(t1 - t0)
            scan_t.append(t2 - t1)
            now += 0.001
        # Nothing is due yet (the first retransmit is >= 5 s away): the cost of looking.
        t0 = perf_counter()
        for _ in range(args.calls):
            dev.handle_timers(now)
        idle = (perf_counter() - t0) / args.calls
        # What handle_timers did before the heap: ask every peer's timers.
        t0 = perf_counter()
        for _ in range(args.calls):
            for p in peers:
                p.timers.expire(now)
        old_idle = (perf_counter() - t0) / args.calls
        h, s = statistics.median(heap_t), statistics.median(scan_t)
        print(
            f"{n:>6} {s * 1e6:>8.1f}us {h * 1e6:>9.1f}us {s / h:>6.0f}x "
            f"{old_idle * 1e6:>10.1f}us {idle * 1e6:>12.1f}us"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
