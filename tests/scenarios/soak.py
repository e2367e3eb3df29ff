"""Soak: steady iperf3 UDP through wiretun<->wiretun in namespaces, sampling both daemons'
RSS and socket queues, then judging loss, reordering and memory growth (scripts/soak.py)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scenarios.traffic import core_drops, rss_kib
from wiretun.lab.netns import NetNS, Topology
from wiretun.lab.peers import PeerSpec, WiretunPeer, udp_ping

PORT_A, PORT_B = 51820, 51821
PAYLOAD = 1300  # bytes per UDP datagram: fits the tunnel's 1420 MTU
RSS_GROWTH_LIMIT = 0.05


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since traffic started
    rss_kib: tuple[int, int]  # daemon a, daemon b
    recv_q: tuple[int, int]  # bytes waiting in each daemon's UDP socket
    load1: float  # the machine's 1-minute load average: others share it


@dataclass
class SoakResult:
    seconds: float
    rate_mbps: int
    samples: list[Sample] = field(default_factory=list)
    packets: int = 0
    lost: int = 0
    out_of_order: int = 0
    mbps: float = 0.0
    drops: tuple[dict[str, int], dict[str, int]] = ({}, {})
    exit_codes: tuple[int | None, int | None] = (None, None)
    loss_seconds: dict[int, int] = field(default_factory=dict)  # second -> packets lost
    counters: list[str] = field(default_factory=list)  # kernel drop counters, non-zero

    def rss_growth(self, index: int) -> float:
        """Growth of one daemon's RSS from the first sample (traffic warmed up) to the last."""
        first, last = self.samples[0].rss_kib[index], self.samples[-1].rss_kib[index]
        return (last - first) / first

    def problems(self) -> list[str]:
        out: list[str] = []
        if len(self.samples) < 2:
            out.append("fewer than two RSS samples")
        else:
            for i, who in enumerate("ab"):
                growth = self.rss_growth(i)
                if growth >= RSS_GROWTH_LIMIT:
                    out.append(f"RSS of {who} grew {growth:.1%}")
            # A queue that only grows ends high; a busy one comes and goes.
            last_q = max(self.samples[-1].recv_q)
            if last_q > 4 * 1024 * 1024:
                out.append(f"UDP receive queue at {last_q} bytes at the end")
        if self.packets == 0:
            out.append("no packets measured")
        if self.lost:
            out.append(f"{self.lost} packets lost")
        if self.out_of_order:
            out.append(f"{self.out_of_order} packets out of order")
        if self.exit_codes != (0, 0):
            out.append(f"daemon exit codes {self.exit_codes}")
        return out

    def report(self) -> str:
        lines = [
            f"{self.seconds:.0f} s of iperf3 UDP at {self.rate_mbps} Mbit/s "
            f"({PAYLOAD}-byte datagrams): {self.mbps:.1f} Mbit/s received, "
            f"{self.packets} packets, {self.lost} lost, {self.out_of_order} out of order",
            "   t(s)  rss a (KiB)  rss b (KiB)  recv-q a  recv-q b  load",
        ]
        for s in self.samples:
            lines.append(
                f"{s.t:7.0f}  {s.rss_kib[0]:11d}  {s.rss_kib[1]:11d}  "
                f"{s.recv_q[0]:8d}  {s.recv_q[1]:8d}  {s.load1:4.1f}"
            )
        if len(self.samples) >= 2:
            lines.append(f"RSS growth: a {self.rss_growth(0):+.2%}, b {self.rss_growth(1):+.2%}")
        lines.append(f"core drops: a {self.drops[0]}, b {self.drops[1]}")
        if self.loss_seconds:
            worst = sorted(self.loss_seconds.items(), key=lambda kv: -kv[1])[:10]
            lines.append(
                f"loss in {len(self.loss_seconds)} of the seconds (t: lost, worst first): "
                + ", ".join(f"{t}: {n}" for t, n in worst)
            )
        lines.append("kernel drop counters: " + (", ".join(self.counters) or "all zero"))
        return "\n".join(lines)


def _recv_q(ns: NetNS, port: int) -> int:
    out = ns.run("ss", "-uanH", f"sport = :{port}")
    return sum(int(ln.split()[1]) for ln in out.splitlines() if ln.strip())


def _wait_listening(ns: NetNS, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 5
    while "5201" not in ns.run("ss", "-ltnH"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("iperf3 server did not start")
        time.sleep(0.05)


def _udp_result(out: str) -> tuple[int, int, int, float]:
    data: dict[str, Any] = json.loads(out)
    if data.get("error"):
        raise RuntimeError(f"iperf3: {data['error']}")
    end = data["end"]
    total = end["sum"]
    ooo = sum(int(s["udp"].get("out_of_order", 0)) for s in end.get("streams", []))
    return (
        int(total["packets"]),
        int(total["lost_packets"]),
        ooo,
        float(total["bits_per_second"]) / 1e6,
    )


def _loss_seconds(out: str, warmup: float) -> dict[int, int]:
    """Per-second loss as the iperf3 server saw it (a -J server, --get-server-output), keyed by
    seconds since sampling started (negative: during the warm-up)."""
    data: dict[str, Any] = json.loads(out)
    server = data.get("server_output_json") or {}
    lost: dict[int, int] = {}
    for interval in server.get("intervals", []):
        total = interval.get("sum", {})
        n = int(total.get("lost_packets", 0))
        if n > 0:
            lost[int(float(total.get("start", 0)) - warmup)] = n
    return lost


def _kernel_counters(ns: NetNS, tun: str) -> list[str]:
    """Where the kernel dropped packets in `ns`: UDP buffer overflows and the TUN device's
    drop counters (non-zero ones only)."""
    found: list[str] = []
    rows = [ln.split() for ln in ns.run("cat", "/proc/net/snmp").splitlines()]
    udp = [r[1:] for r in rows if r and r[0] == "Udp:"]
    if len(udp) >= 2:
        for key, value in zip(udp[0], udp[1], strict=False):
            if key in ("InErrors", "RcvbufErrors", "SndbufErrors", "MemErrors") and value != "0":
                found.append(f"{ns.name} udp {key}={value}")
    link = json.loads(ns.run("ip", "-s", "-j", "link", "show", "dev", tun))[0]
    for direction in ("rx", "tx"):
        for key, value in link.get("stats64", {}).get(direction, {}).items():
            if key in ("dropped", "errors", "over_errors") and value:
                found.append(f"{tun} {direction}_{key}={value}")
    return found


def run_soak(
    seconds: float,
    *,
    rate_mbps: int = 200,
    sample_every: float = 10.0,
    warmup: float = 10.0,
    progress: Callable[[Sample], None] | None = None,
) -> SoakResult:
    """Soak wiretun (a) -> wiretun (b) with UDP for `seconds` after `warmup`; RSS samples
    start once traffic has warmed up, so the first one is the baseline."""
    result = SoakResult(seconds, rate_mbps)
    with Topology() as topo, WiretunPeer(topo.netns()) as wa, WiretunPeer(topo.netns()) as wb:
        a, b = wa.ns, wb.ns
        topo.veth(a, b, "192.168.241.1/24", "192.168.241.2/24")
        wa.write_config(
            addresses=["10.9.0.1/24"],
            listen_port=PORT_A,
            peers=[PeerSpec(wb.keys.public, ["10.9.0.2/32"], endpoint=f"192.168.241.2:{PORT_B}")],
        )
        wb.write_config(
            addresses=["10.9.0.2/24"],
            listen_port=PORT_B,
            peers=[PeerSpec(wa.keys.public, ["10.9.0.1/32"])],
        )
        wa.start()
        wb.start()
        if udp_ping(a, b, "10.9.0.2") != 3:
            raise RuntimeError("the tunnel does not carry traffic")
        assert wa.proc is not None and wb.proc is not None
        pids = (wa.proc.pid, wb.proc.pid)
        server = b.popen(
            "iperf3", "-s", "-1", "-J", "-B", "10.9.0.2",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client: subprocess.Popen[bytes] | None = None
        out_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
        try:
            _wait_listening(b, server)
            duration = warmup + seconds
            # A file, not a pipe: -J output of a long run outgrows the pipe buffer, and
            # iperf3 would block writing it while we wait for it to exit.
            client = a.popen(
                "iperf3", "-c", "10.9.0.2", "-u", "-b", f"{rate_mbps}M", "-l", str(PAYLOAD),
                "-t", f"{duration:g}", "-J", "-w", "4M", "--get-server-output",
                stdout=out_file, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            start = time.monotonic()
            next_at = warmup
            while client.poll() is None:
                now = time.monotonic() - start
                if now >= next_at and now <= duration:
                    sample = Sample(
                        round(now - warmup, 1),
                        (rss_kib(pids[0]), rss_kib(pids[1])),
                        (_recv_q(a, PORT_A), _recv_q(b, PORT_B)),
                        os.getloadavg()[0],
                    )
                    result.samples.append(sample)
                    if progress is not None:
                        progress(sample)
                    next_at += sample_every
                time.sleep(0.2)
            client.wait(timeout=30)
            out_file.seek(0)
            out = out_file.read().decode()
            result.packets, result.lost, result.out_of_order, result.mbps = _udp_result(out)
            result.loss_seconds = _loss_seconds(out, warmup)
            result.counters = _kernel_counters(a, wa.name) + _kernel_counters(b, wb.name)
            result.drops = (core_drops(wa.stats()), core_drops(wb.stats()))
        finally:
            for p in (client, server):
                if p is not None and p.poll() is None:
                    p.kill()
                if p is not None:
                    p.wait()
            out_file.close()
        result.exit_codes = (wa.stop(), wb.stop())
    return result
