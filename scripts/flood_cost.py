"""What one datagram of a valid-mac1 initiation flood costs the responder, in-process.

    .venv/bin/python scripts/flood_cost.py [--rounds 5]

Median per datagram over --rounds (the machine is shared: compare runs side by side):

  receive      UdpBind.recv_buffers of 148-byte datagrams sent over loopback
  shed         Device.receive_gro of flood datagrams while the handshake queue is full
               (1024 wait): what every datagram past the queue costs
  cookie reply one flood initiation accepted and processed under load: mac1, the cookie,
               the reply sealed and queued (Handshaker.accept + process)
  non-peer DH  the same initiation when not under load: one DH, then refused as unknown_peer

`scripts/flood_bench.py flood` measures what this means for a live tunnel.
"""

from __future__ import annotations

import argparse
import secrets
import socket
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from wiretun import datapath
from wiretun.tunnel.udp import UdpBind
from wiretun.wireguard.crypto import generate_private_key, public_key
from wiretun.wireguard.device import Device
from wiretun.wireguard.handshake import StaticIdentity
from wiretun.wireguard.handshaker import Handshaker
from wiretun.wireguard.outbox import Outbox
from wiretun.wireguard.stats import Drops

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from scenarios.hostile import stranger_initiation

SRC = "192.0.2.9"


def per_item(run: Callable[[], int], rounds: int) -> float:
    """Median seconds per item of `run` (which returns how many items it did)."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        n = run()
        times.append((time.perf_counter() - start) / n)
    return statistics.median(times)


def receive_cost(rounds: int) -> float:
    bind = UdpBind.open(host4="127.0.0.1", host6=None)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    msg = bytes([1, 0, 0, 0]) + bytes(144)
    try:
        # The sends are outside the timing: the receives alone.
        times = []
        for _ in range(rounds):
            for _ in range(2000):
                tx.sendto(msg, ("127.0.0.1", bind.port))
            start, got = time.perf_counter(), 0
            while got < 2000:
                got += len(bind.recv_buffers(128))
            times.append((time.perf_counter() - start) / got)
        return statistics.median(times)
    finally:
        tx.close()
        bind.close()


def shed_cost(rounds: int) -> float:
    backend = datapath.load()
    dev = Device(generate_private_key(), datapath=backend)
    flood = [stranger_initiation(public_key(dev.private_key)) for _ in range(64)]
    buffers = [(flood[i % 64], 148, (SRC, 1024 + i)) for i in range(128)]
    frames = backend.coalescer(vnet=True, udp=False)
    dev.receive_gro(buffers * 9, 1.0, frames)  # the queue is full from here on
    assert dev.handshakes_waiting == 1024

    def run() -> int:
        for _ in range(100):
            dev.receive_gro(buffers, 1.0, frames)
        return 100 * len(buffers)

    return per_item(run, rounds)


def handshaker_cost(rounds: int, *, under_load: bool) -> float:
    identity = StaticIdentity.generate()
    flood = [stranger_initiation(identity.public) for _ in range(64)]
    outbox = Outbox()
    hs = Handshaker(
        identity, peers={}, outbox=outbox, events=deque(), drops=Drops(),
        rng=secrets.token_bytes,
    )  # fmt: skip
    hs.forced_load = under_load
    n = 2000 if under_load else 200
    clock = [1.0]

    def run() -> int:
        for i in range(n):
            hs.accept(flood[i % 64], (SRC, 1024 + i))
            # Not under load: past 128 a second the count itself puts it there; a new
            # second for every message keeps it out.
            if not under_load:
                clock[0] += 1.0
            hs.process(clock[0], 8)
            if i % 256 == 0:
                outbox.drain()
        assert hs.is_under_load(clock[0]) == under_load
        return n

    return per_item(run, rounds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    rows = {
        "receive": receive_cost(args.rounds),
        "shed": shed_cost(args.rounds),
        "cookie reply": handshaker_cost(args.rounds, under_load=True),
        "non-peer DH": handshaker_cost(args.rounds, under_load=False),
    }
    for name, seconds in rows.items():
        print(f"  {name:14s} {seconds * 1e6:8.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
