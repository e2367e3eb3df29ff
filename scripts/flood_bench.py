"""What a handshake flood and an initiation storm cost a live peer, in namespaces (root).

Two scenarios, each against `wiretun up` (responder, 10.9.0.1) with Debian's wireguard-go as
the one legitimate peer (10.9.0.2):

flood       A separate process in its own namespace sends initiations with a valid mac1
            for wiretun's public key (from static keys it does not know) at --rate per
            second, from one address and every source port (a raw socket: 64k sources).
            Ping over the tunnel (loss, median, p99) and iperf3 TCP throughput, quiet and
            flooded, side by side; also flooded at a closed port (the flooder's own CPU on
            the shared cores, without the tunnel's work).
dead-peers  wiretun also has --dead-peers peers whose endpoints never answer (routed to a
            namespace that drops them). A local socket sends one datagram to each of them;
            ping p99 on the live peer for --seconds, and how many initiations left.

    sudo .venv/bin/python scripts/flood_bench.py flood [--rate 40000] [--seconds 3]
    sudo .venv/bin/python scripts/flood_bench.py dead-peers [--dead-peers 3000] [--seconds 15]

The flooder sends only to the address the script gives it, inside the namespaces it made.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from wiretun.bench.iperf import run_iperf
from wiretun.bench.plan import WORKLOADS
from wiretun.lab.netns import NetNS, Topology
from wiretun.lab.peers import WireguardGoPeer, WiretunPeer, udp_ping
from wiretun.lab.procs import KeyPair, PeerSpec

# The scenarios live with the tests (tests/scenarios), as for scripts/soak.py.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from scenarios.hostile import stranger_initiation
from scenarios.interop import wireguard_go_initiates_to
from scenarios.traffic import core_drops

PORT = 51820
_PING_TIME = re.compile(rb"icmp_seq=(\d+) .*time=([\d.]+) ms")


@dataclass
class PingStats:
    sent: int
    received: int
    median_ms: float
    p99_ms: float
    max_ms: float

    @property
    def loss(self) -> float:
        return 1 - self.received / self.sent if self.sent else 1.0

    def __str__(self) -> str:
        return (
            f"loss {self.loss:.1%} ({self.received}/{self.sent}), rtt median "
            f"{self.median_ms:.2f} ms, p99 {self.p99_ms:.2f} ms, max {self.max_ms:.2f} ms"
        )


def ping_popen(ns: NetNS, addr: str, count: int, interval: float) -> subprocess.Popen[bytes]:
    return ns.popen(
        "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2", addr,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def ping_result(proc: subprocess.Popen[bytes], count: int) -> PingStats:
    out, _ = proc.communicate(timeout=count * 0.1 + 60)
    rtts = [float(m.group(2)) for m in _PING_TIME.finditer(out)]
    rtts.sort()
    if not rtts:
        return PingStats(count, 0, float("nan"), float("nan"), float("nan"))
    p99 = rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]
    return PingStats(count, len(rtts), statistics.median(rtts), p99, rtts[-1])


def ping(ns: NetNS, addr: str, count: int, interval: float) -> PingStats:
    return ping_result(ping_popen(ns, addr, count, interval), count)


def tcp_mbps(server: NetNS, client: NetNS, seconds: float) -> float:
    result = run_iperf(
        server, client, "10.9.0.1", port=5201, workload=WORKLOADS["tcp"], duration=seconds,
        udp_rate_mbps=0,
    )  # fmt: skip
    return result.gbps * 1000


# ---------------------------------------------------------------- the flooder (own process)


def _ip_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    # The kernel fills the IP checksum, total length and id of an IP_HDRINCL packet; a
    # zero UDP checksum means "none" over IPv4.
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0, 64, socket.IPPROTO_UDP, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    return ip + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def flooder(args: argparse.Namespace) -> int:
    """Send initiations with a valid mac1 at about `rate`/s for `seconds`, source ports
    1024..65535 in turn; print how many went out (JSON)."""
    public = base64.b64decode(args.key)
    pool = [stranger_initiation(public) for _ in range(64)]
    dport = int(args.port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    ports = range(1024, 65536)
    packets = [
        _ip_udp(args.src, args.dst, ports[i % len(ports)], dport, pool[i % len(pool)])
        for i in range(4096)
    ]
    sent = errors = 0
    start = time.monotonic()
    end = start + args.seconds
    i = 0
    target = (args.dst, 0)
    while True:
        now = time.monotonic()
        if now >= end:
            break
        delay = start + i / args.rate - now
        if delay > 0:
            time.sleep(delay)
        for _ in range(64):  # bursts of 64: the rate holds without a sleep per datagram
            try:
                sock.sendto(packets[i % len(packets)], target)
                sent += 1
            except OSError:
                errors += 1
            i += 1
    elapsed = time.monotonic() - start
    print(json.dumps({"sent": sent, "errors": errors, "rate": sent / elapsed}))
    return 0


class Flood:
    """The flooder in `ns`: from `src` (every source port) to `dst`:`port`."""

    def __init__(self, ns: NetNS, src: str, dst: tuple[str, int], key: str, rate: float) -> None:
        self.ns, self.src, self.key, self.rate = ns, src, key, rate
        self.dst, self.port = dst
        self.proc: subprocess.Popen[bytes] | None = None
        self.result: dict[str, float] = {}

    def start(self, seconds: float) -> None:
        self.proc = self.ns.popen(
            sys.executable, __file__, "_flooder", "--src", self.src, "--dst", self.dst,
            "--port", str(self.port), "--key", self.key, "--rate", str(self.rate),
            "--seconds", str(seconds),
            stdout=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(0.5)  # its initiations are built before it sends

    def wait(self) -> dict[str, float]:
        assert self.proc is not None
        out, _ = self.proc.communicate(timeout=120)
        self.result = json.loads(out.decode().strip().splitlines()[-1])
        return self.result


# ---------------------------------------------------------------- scenarios


def _live_pair(topo: Topology) -> tuple[NetNS, NetNS]:
    a, b = topo.netns(), topo.netns()
    topo.veth(a, b, "192.168.241.1/24", "192.168.241.2/24")
    return a, b


def scenario_flood(args: argparse.Namespace) -> int:
    with Topology("hcfl") as topo:
        a, b = _live_pair(topo)
        f = topo.netns()
        topo.veth(f, b, "192.168.243.1/24", "192.168.243.2/24")
        with WireguardGoPeer(a).start() as wg, WiretunPeer(b) as wt:
            wireguard_go_initiates_to(wg, wt, f"192.168.241.2:{PORT}", wt_port=PORT)
            assert udp_ping(a, b, "10.9.0.1") == 3, "no tunnel"
            count = int(args.seconds / args.interval)
            rows: list[tuple[str, PingStats, float, dict[str, float]]] = []
            for label, port in (("quiet", None), ("flood, closed port", PORT + 1),
                                ("flood", PORT)):  # fmt: skip
                fl = None
                if port is not None:
                    fl = Flood(f, "192.168.243.1", ("192.168.243.2", port), wt.keys.public,
                               args.rate)  # fmt: skip
                    fl.start(2 * args.seconds + 2)
                pings = ping(a, "10.9.0.1", count, args.interval)
                mbps = tcp_mbps(b, a, args.seconds)
                result = fl.wait() if fl is not None else {}
                rows.append((label, pings, mbps, result))
            alive = wt.proc is not None and wt.proc.poll() is None
            drops = core_drops(wt.stats()) if alive else {}
            wt.stop()
    quiet_mbps = rows[0][2]
    print(f"flood rate asked {args.rate:.0f}/s, {args.seconds} s ping + {args.seconds} s iperf3")
    for label, pings, mbps, result in rows:
        rate = f", flooder {result['rate']:.0f}/s" if result else ""
        print(f"{label:>20}: ping {pings}; tcp {mbps:.0f} Mbit/s "
              f"({mbps / quiet_mbps:.2f} of quiet){rate}")  # fmt: skip
    print(f"flooded/closed-port throughput ratio {rows[2][2] / rows[1][2]:.2f}")
    print(f"wiretun alive {alive}; core drops {drops}")
    return 0


def scenario_dead_peers(args: argparse.Namespace) -> int:
    n = args.dead_peers
    with Topology("hcdp") as topo:
        a, b = _live_pair(topo)
        d = topo.netns()
        _, vd = topo.veth(b, d, "192.168.244.1/24", "192.168.244.2/24")
        # The dead endpoints are routed to d, which does not forward: they never answer.
        b.run("ip", "route", "add", "198.18.0.0/16", "via", "192.168.244.2")
        with WireguardGoPeer(a).start() as wg, WiretunPeer(b) as wt:
            wt.write_config(
                addresses=["10.9.0.1/16"],
                listen_port=PORT,
                peers=[PeerSpec(wg.keys.public, ["10.9.0.2/32"])],
            )
            wt.start()
            wg.configure(listen_port=51821)
            wg.add_peer(wt.keys.public, allowed_ips=["10.9.0.1/32"],
                        endpoint=f"192.168.241.2:{PORT}")  # fmt: skip
            wg.link_up(["10.9.0.2/24"])
            assert udp_ping(a, b, "10.9.0.1") == 3, "no tunnel"
            lines = []
            targets = []
            for i in range(n):
                host = f"10.9.{1 + i // 250}.{1 + i % 250}"
                targets.append(host)
                ep = f"198.18.{i // 250}.{1 + i % 250}:{PORT}"
                lines += [f"[Peer]\nPublicKey = {KeyPair.generate().public}\n"
                          f"AllowedIPs = {host}/32\nEndpoint = {ep}\n"]  # fmt: skip
            t0 = time.monotonic()
            wt.wg("addconf", wt.name, "/dev/stdin", stdin="\n".join(lines))
            print(f"{n} dead peers added in {time.monotonic() - t0:.1f} s")

            def rx_packets() -> int:
                out = d.run("cat", f"/sys/class/net/{vd}/statistics/rx_packets")
                return int(out.strip())

            before = rx_packets()
            count = int(args.seconds / args.interval)
            pinger = ping_popen(a, "10.9.0.1", count, args.interval)
            time.sleep(0.5)
            with b.enter():
                poke = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            t0 = time.monotonic()
            for host in targets:
                poke.sendto(b"poke", (host, 9))
            poke.close()
            poke_s = time.monotonic() - t0
            pings = ping_result(pinger, count)
            initiations = rx_packets() - before
            alive = wt.proc is not None and wt.proc.poll() is None
            drops = core_drops(wt.stats()) if alive else {}
            wt.stop()
    print(f"poked {n} dead peers in {poke_s * 1000:.0f} ms; over {args.seconds} s: ping {pings}")
    print(f"initiations (datagrams towards the dead endpoints): {initiations}")
    print(f"wiretun alive {alive}; core drops {drops}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="what", required=True)
    fl = sub.add_parser("flood")
    fl.add_argument("--rate", type=float, default=40_000)
    fl.add_argument("--seconds", type=float, default=3.0)
    fl.add_argument("--interval", type=float, default=0.01)
    dp = sub.add_parser("dead-peers")
    dp.add_argument("--dead-peers", type=int, default=3000)
    dp.add_argument("--seconds", type=float, default=15.0)
    dp.add_argument("--interval", type=float, default=0.02)
    fo = sub.add_parser("_flooder")
    for name in ("--src", "--dst", "--port", "--key"):
        fo.add_argument(name, required=True)
    fo.add_argument("--rate", type=float, required=True)
    fo.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    if args.what == "_flooder":
        return flooder(args)
    if args.what == "flood":
        return scenario_flood(args)
    return scenario_dead_peers(args)


if __name__ == "__main__":
    raise SystemExit(main())
