#!/usr/bin/env python3
"""iperf3 single-stream throughput, wiretun<->wiretun vs wireguard-go<->wireguard-go, one run.

Two namespaces joined by a veth pair; the same overlay addresses and MTU (1420) for both
implementations. Rounds alternate between the implementations so that load from other
users of the machine hits both alike; compare the ratio, not the absolute numbers.

    .venv/bin/python scripts/tunnel_compare.py [--time 5] [--rounds 2] [--no-offload]

Needs root, iperf3, wireguard-go and wg. `wiretun bench` supersedes this.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from wiretun.testing.netns import NetNS, Topology
from wiretun.testing.wgpeer import PeerSpec, WireguardGoPeer, WiretunPeer, udp_ping

A_UNDER, B_UNDER = "192.168.241.1", "192.168.241.2"
A_OVER, B_OVER = "10.9.0.1", "10.9.0.2"


@contextmanager
def wiretun_pair(a: NetNS, b: NetNS, args: list[str]) -> Iterator[None]:
    with WiretunPeer(a) as wa, WiretunPeer(b) as wb:
        wa.write_config(
            addresses=[f"{A_OVER}/24"],
            listen_port=51820,
            peers=[PeerSpec(wb.keys.public, [f"{B_OVER}/32"], endpoint=f"{B_UNDER}:51821")],
        )
        wb.write_config(
            addresses=[f"{B_OVER}/24"],
            listen_port=51821,
            peers=[PeerSpec(wa.keys.public, [f"{A_OVER}/32"], endpoint=f"{A_UNDER}:51820")],
        )
        wa.start(*args)
        wb.start(*args)
        yield


@contextmanager
def wireguard_go_pair(a: NetNS, b: NetNS) -> Iterator[None]:
    with WireguardGoPeer(a).start() as wa, WireguardGoPeer(b).start() as wb:
        wa.configure(listen_port=51820)
        wb.configure(listen_port=51821)
        wa.add_peer(wb.keys.public, allowed_ips=[f"{B_OVER}/32"], endpoint=f"{B_UNDER}:51821")
        wb.add_peer(wa.keys.public, allowed_ips=[f"{A_OVER}/32"], endpoint=f"{A_UNDER}:51820")
        wa.link_up([f"{A_OVER}/24"])
        wb.link_up([f"{B_OVER}/24"])
        yield


def iperf(a: NetNS, b: NetNS, seconds: int, reverse: bool) -> tuple[float, int]:
    """(receiver Gbit/s, sender retransmits) of one TCP stream from a to b (b to a if
    reverse)."""
    srv = b.popen("iperf3", "-s", "-1", "-B", B_OVER, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while "5201" not in b.run("ss", "-ltnH"):
            if time.monotonic() > deadline:
                raise RuntimeError("iperf3 server did not start")
            time.sleep(0.05)
        args = ["iperf3", "-c", B_OVER, "-t", str(seconds), "-J"] + (["-R"] if reverse else [])
        result: dict[str, Any] = json.loads(a.run(*args, timeout=seconds + 30))
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.wait()
    end = result["end"]
    return end["sum_received"]["bits_per_second"] / 1e9, int(end["sum_sent"].get("retransmits", 0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--time", type=int, default=5, help="seconds per iperf3 run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--offload", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--queues", type=int, default=1)
    opts = parser.parse_args()
    wiretun_args = ["--offload" if opts.offload else "--no-offload", "--queues", str(opts.queues)]
    label = f"wiretun ({'offload' if opts.offload else 'no offload'}, {opts.queues} queue(s))"
    results: dict[tuple[str, str], list[tuple[float, int]]] = {}
    with Topology("wtcmp") as topo:
        a, b = topo.netns(), topo.netns()
        topo.veth(a, b, f"{A_UNDER}/24", f"{B_UNDER}/24")
        for _ in range(opts.rounds):
            for name in (label, "wireguard-go (Debian)"):
                pair = (
                    wiretun_pair(a, b, wiretun_args) if name == label else wireguard_go_pair(a, b)
                )
                with pair:
                    if udp_ping(a, b, B_OVER) == 0:
                        raise RuntimeError(f"{name}: no connectivity")
                    for direction, reverse in (("a->b", False), ("b->a", True)):
                        r = iperf(a, b, opts.time, reverse)
                        results.setdefault((name, direction), []).append(r)
                        print(f"{name:40} {direction}  {r[0]:.2f} Gbit/s  retr {r[1]}", flush=True)
    print(f"\nmedian of {opts.rounds} round(s), {opts.time} s single TCP stream, MTU 1420:")
    for direction in ("a->b", "b->a"):
        ours = statistics.median(g for g, _ in results[(label, direction)])
        theirs = statistics.median(g for g, _ in results[("wireguard-go (Debian)", direction)])
        print(
            f"  {direction}: {label} {ours:.2f} Gbit/s, wireguard-go {theirs:.2f} Gbit/s, "
            f"ratio {ours / theirs:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
