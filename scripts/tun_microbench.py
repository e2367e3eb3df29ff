"""Packets/s the TUN layer reads and writes with queues=1, 2, 4 (a benchmark, not a test).

Read (live): a separate sender process in the namespace blasts UDP over 16 flows to an
address routed to the TUN; we count what `recv_many` delivers. Read (drain): the sender
first fills the kernel queues while we do not consume, then we time draining them, so the
sender's speed does not cap the figure. Write: we `send_many` prebuilt UDP
packets over 16 flows to a local socket that nobody reads; we count what the writers wrote.
Run as root: .venv/bin/python scripts/tun_microbench.py [--seconds 3] [--queues 1,2,4]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import subprocess
import sys
import time

from wiretun.lab.netns import NetNS, unique_name
from wiretun.packet import internet_checksum
from wiretun.tun import Tun

LOCAL, REMOTE = "10.93.0.1", "10.93.0.2"
FLOWS = 16
CAPACITY = 4096

SENDER = """
import socket, sys, time
flows, size, limit = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[4])
seconds = float(sys.argv[3])
socks = []
for i in range(flows):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("10.93.0.2", 9000 + i))
    socks.append(s)
payload = bytes(size)
sent = 0
end = time.monotonic() + seconds
while time.monotonic() < end and sent < limit:
    for _ in range(50):
        for s in socks:
            try:
                s.send(payload)
                sent += 1
            except OSError:
                pass
print(sent)
"""


def udp_packet(sport: int, size: int) -> bytes:
    udp = struct.pack("!HHHH", sport, 9999, 8 + size, 0) + bytes(size)
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
        socket.inet_aton(REMOTE), socket.inet_aton(LOCAL),
    )  # fmt: skip
    csum = internet_checksum(hdr)
    return hdr[:10] + struct.pack("!H", csum) + hdr[12:] + udp


async def measure_read(tun: Tun, ns: NetNS, seconds: float, size: int) -> tuple[float, float]:
    proc = ns.popen(
        sys.executable, "-c", SENDER, str(FLOWS), str(size), str(seconds), str(10**12),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    got = 0
    start = time.monotonic()
    end = start + seconds + 0.5
    while time.monotonic() < end:
        try:
            got += len(await asyncio.wait_for(tun.recv_many(), 0.5))
        except TimeoutError:
            break
    elapsed = seconds
    out, _ = proc.communicate(timeout=30)
    return got / elapsed, int(out.strip() or 0) / seconds


async def measure_drain(tun: Tun, ns: NetNS, count: int, size: int, skip: int) -> float:
    """Packets/s delivered from queues the kernel filled while we did not consume."""
    ns.run(sys.executable, "-c", SENDER, str(FLOWS), str(size), "60", str(count), timeout=120)
    got = 0
    start = 0.0
    while True:
        try:
            got += len(await asyncio.wait_for(tun.recv_many(), 0.5))
        except TimeoutError:
            break
        if not start and got >= skip:
            # What sat in our own channel before we started is not a read rate.
            start, base = time.monotonic(), got
        last = time.monotonic()
    return (got - base) / (last - start) if start and last > start else 0.0


async def measure_write(tun: Tun, seconds: float, size: int) -> float:
    batch = [udp_packet(20000 + i, size) for i in range(FLOWS)] * 8  # 128 packets
    before = tun.stats().total.tx_packets
    start = time.monotonic()
    end = start + seconds
    while time.monotonic() < end:
        if tun.send_many(batch) < len(batch):
            await tun.send_ready()
    # Count only what was written within the window.
    written = tun.stats().total.tx_packets - before
    return written / (time.monotonic() - start)


def bench(queues: int, seconds: float, size: int) -> tuple[float, float, float, float, int | None]:
    ns = NetNS.create("wtb")
    try:
        name = unique_name("wtb")
        with ns.enter():
            tun = Tun.open(name, queues=queues, inbound_capacity=CAPACITY)
            sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with tun, sink:
            ns.run("ip", "addr", "add", f"{LOCAL}/24", "dev", name)
            ns.run("ip", "link", "set", name, "txqueuelen", "100000", "up")
            sink.bind((LOCAL, 9999))
            rx, offered = asyncio.run(measure_read(tun, ns, seconds, size))
            drain = asyncio.run(measure_drain(tun, ns, 60000, size, CAPACITY + 100 * queues))
            tx = asyncio.run(measure_write(tun, seconds, size))
            dropped = tun.stats().kernel_dropped
        return rx, offered, drain, tx, dropped
    finally:
        ns.delete()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--queues", default="1,2,4")
    parser.add_argument("--size", type=int, default=64, help="UDP payload bytes")
    parser.add_argument("--rounds", type=int, default=1, help="repeat, interleaving queue counts")
    args = parser.parse_args()
    counts = [int(q) for q in args.queues.split(",")]
    print(
        f"{'queues':>6} {'read pkt/s':>11} {'offered pkt/s':>14} {'drain pkt/s':>12}"
        f" {'write pkt/s':>12} {'kdrop':>8}"
    )
    for _ in range(args.rounds):
        for q in counts:
            rx, offered, drain, tx, dropped = bench(q, args.seconds, args.size)
            print(
                f"{q:>6} {rx:>11,.0f} {offered:>14,.0f} {drain:>12,.0f} {tx:>12,.0f} {dropped!s:>8}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
