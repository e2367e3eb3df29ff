"""How long a full garbage collection stops a `wiretun up` process with many peers.

The process imports what `wiretun up` runs with, and a Device gets --peers peers (endpoint,
an allowed IP each, a handshake started so each holds handshake state, as in a storm). A
full collection (`gc.collect()`) is timed, median of --passes, in three states:

  nothing frozen      the heap as it was before `up` froze its setup
  frozen after peers  `freeze_setup_objects()` after the peers were made (peers in the config)
  peers after freeze  the freeze came first, then the peers (peers added over UAPI)

The data path stalls for as long as a pass takes; Python runs one when the objects that
survived younger collections reach a quarter of the older ones.

    .venv/bin/python scripts/gc_pause.py [--peers 3000] [--passes 5]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import time

import wiretun.tunnel.tunnel  # noqa: F401 (the modules `up` runs with)
from wiretun.testing.wgpair import ipv4_packet, seeded_rng
from wiretun.tunnel.up import freeze_setup_objects
from wiretun.wireguard.crypto import generate_private_key, public_key
from wiretun.wireguard.device import Device


def device_with_peers(n: int) -> Device:
    rng = seeded_rng(1)
    dev = Device(generate_private_key(rng))
    hosts = []
    for i in range(n):
        peer = public_key(generate_private_key(rng))
        hosts.append(f"10.{9 + i // 62500}.{i // 250 % 250}.{1 + i % 250}")
        dev.add_peer(peer, endpoint=(f"198.18.{i // 250 % 250}.{1 + i % 250}", 51820))
        dev.add_allowed_ips(peer, [f"{hosts[-1]}/32"])
    # A packet to every peer (a local user's poke): each stages it and wants a handshake,
    # which the pacer lets out a few at a time over the next seconds.
    dev.send_packets([ipv4_packet("10.9.0.1", host, b"poke") for host in hosts], 0.0)
    for t in range(1, 301):
        dev.handle_timers(t * 0.01)
        dev.datagrams_to_send()
    return dev


def full_pass_ms(passes: int) -> float:
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--peers", type=int, default=3000)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--state", choices=["none", "after", "before"], default=None)
    args = parser.parse_args(argv)
    if args.state is None:
        # Each state in a fresh process: a freeze cannot be taken back cleanly.
        for state, label in (("none", "nothing frozen"), ("after", "frozen after peers"),
                             ("before", "peers after freeze")):  # fmt: skip
            out = subprocess.run(
                [sys.executable, __file__, "--peers", str(args.peers), "--passes",
                 str(args.passes), "--state", state],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            print(f"{label:>20}: {out.strip()}")
        return 0
    if args.state == "before":
        freeze_setup_objects()
    dev = device_with_peers(args.peers)
    if args.state == "after":
        freeze_setup_objects()
    ms = full_pass_ms(args.passes)
    tracked = len(gc.get_objects())
    print(f"full gc pass {ms:6.2f} ms, {tracked} objects scanned, {gc.get_freeze_count()} frozen")
    del dev
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
