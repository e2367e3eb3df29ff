#!/usr/bin/env python3
"""Many peers: how long `up` and `wg show` take with N peers, and whether the data path of
the one live peer stalls meanwhile (issue #15).

    .venv/bin/python scripts/many_peers.py [--peers 10000]
                      [--impl wiretun|wireguard-go|wg-quick] [--covered] [--shows 3]
                      [--show-cmd wg|wiretun]

Needs root, wireguard-go and wg (and wg-quick for --impl wg-quick). In throwaway namespaces
A and B joined by a veth: the device under test in A has N peers (one /32 each; one of them
is wireguard-go in B, the live peer, the others have no endpoint) and B pings A through the
tunnel with UDP probes every 5 ms from before `up` to the end. Reported: the time of `up`
(wiretun: exec to ready; wireguard-go: the `wg setconf` of the same peers, no routes;
wg-quick: `wg-quick up` of the same file with wireguard-go as its userspace implementation),
of each `wg show NAME` and `wg show NAME dump` (or, --show-cmd wiretun, `wiretun show NAME`
and `wiretun show NAME --json`: a Python start included), the probes' RTT while each show
ran (max, and the longest gap without an answer), and of `down` (SIGTERM to exit;
wg-quick: `wg-quick down`). By default each /32 is outside the Address prefix, so `up`
installs one route per peer (as wg-quick does); --covered puts them inside it (no routes).
Wall-clock figures on a shared machine: compare runs side by side, in one session.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from scenarios.cycles import wait_up
from scenarios.traffic import rss_kib
from wiretun.lab.netns import NetNS, Topology, unique_name
from wiretun.lab.peers import KeyPair, PeerSpec, WireguardGoPeer, WiretunPeer
from wiretun.lab.procs import WG_GO_ENV, wg_quick_config

PROBE_INTERVAL = 0.005


def public_keys(n: int) -> list[str]:
    import base64

    return [
        base64.b64encode(X25519PrivateKey.generate().public_key().public_bytes_raw()).decode()
        for _ in range(n)
    ]


def peer_ip(i: int, covered: bool) -> str:
    # i >= 1; 10.9.0.2 is the live peer. Covered: inside 10.9.0.0/16 (the Address prefix).
    base = 9 if covered else 100
    return f"10.{base + (i >> 16)}.{(i >> 8) & 0xFF}.{i & 0xFF}/32"


@dataclass
class Prober:
    """UDP probes from B to an echo in A every PROBE_INTERVAL; (sent at, rtt or None)."""

    b: NetNS
    a: NetNS
    target: str
    samples: list[tuple[float, float | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Prober:
        with self.a.enter():
            self._echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._echo.bind(("0.0.0.0", 7777))
        with self.b.enter():
            self._cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._cli.settimeout(0.001)
        self._threads = [
            threading.Thread(target=self._echo_loop, daemon=True),
            threading.Thread(target=self._probe_loop, daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def _echo_loop(self) -> None:
        self._echo.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data, peer = self._echo.recvfrom(64)
            except TimeoutError:
                continue
            self._echo.sendto(data, peer)

    def _probe_loop(self) -> None:
        pending: dict[int, float] = {}
        seq = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_at:
                seq += 1
                pending[seq] = now
                self._cli.sendto(seq.to_bytes(8, "big"), (self.target, 7777))
                next_at += PROBE_INTERVAL
            try:
                data = self._cli.recv(64)
            except (TimeoutError, OSError):
                continue
            sent = pending.pop(int.from_bytes(data[:8], "big"), None)
            if sent is not None:
                self.samples.append((sent, time.monotonic() - sent))
        self.samples += [(t, None) for t in pending.values()]

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        self._echo.close()
        self._cli.close()

    def window(self, start: float, end: float) -> tuple[int, int, float, float]:
        """(probes sent, lost, max RTT ms, longest stall ms) for probes sent in [start, end]."""
        inside = sorted((t, r) for t, r in self.samples if start <= t <= end)
        lost = sum(1 for _, r in inside if r is None)
        rtts = [r for _, r in inside if r is not None]
        # A stall: from a probe's send until its answer, the longest any answer took, or the
        # longest run of lost probes.
        stall = max(rtts, default=0.0)
        run = longest = 0
        for _, r in inside:
            run = run + 1 if r is None else 0
            longest = max(longest, run)
        stall = max(stall, longest * PROBE_INTERVAL)
        return len(inside), lost, 1000 * max(rtts, default=0.0), 1000 * stall


def timed(cmd: list[str]) -> tuple[float, float, int]:
    start = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, timeout=300, check=True).stdout
    return start, time.monotonic(), len(out)


def show_commands(kind: str, name: str) -> list[tuple[str, list[str]]]:
    if kind == "wg":
        return [("wg show", ["wg", "show", name]), ("wg dump", ["wg", "show", name, "dump"])]
    wiretun = [sys.executable, "-m", "wiretun", "show", name]
    return [("wiretun show", wiretun), ("wiretun json", [*wiretun, "--json"])]


def wg_quick_env() -> list[str]:
    return ["env", "WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go", f"{WG_GO_ENV}=1"]


@dataclass
class Dut:
    """The device under test as started: its interface name, daemon pid, and how it stops."""

    name: str
    pid: int | None
    stop: Callable[[], float]  # seconds until it is down
    cleanup: Callable[[], object]


def start_wiretun(
    a: NetNS, keys: KeyPair, peers: list[PeerSpec], address: str
) -> tuple[Dut, float]:
    wt = WiretunPeer(a, keys=keys)
    wt.write_config(addresses=[address], listen_port=51820, peers=peers)
    t0 = time.monotonic()
    wt.start(timeout=300, verbose=0)
    wait_up(wt, 300)
    up = time.monotonic() - t0
    assert wt.proc is not None
    proc = wt.proc

    def stop() -> float:
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        return time.monotonic() - t0

    return Dut(wt.name, proc.pid, stop, wt.stop), up


def start_wireguard_go(a: NetNS, keys: KeyPair, peers: list[PeerSpec]) -> tuple[Dut, float]:
    go = WireguardGoPeer(a, keys=keys).start()
    lines = ["[Interface]", f"PrivateKey = {keys.private}", "ListenPort = 51820"]
    for p in peers:
        lines += ["[Peer]", f"PublicKey = {p.public_key}",
                  f"AllowedIPs = {', '.join(p.allowed_ips)}"]  # fmt: skip
        if p.endpoint:
            lines.append(f"Endpoint = {p.endpoint}")
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        t0 = time.monotonic()
        a.run("wg", "setconf", go.name, f.name, timeout=300)
        up = time.monotonic() - t0
    go.link_up(["10.9.0.1/24"])
    assert go.proc is not None
    proc = go.proc

    def stop() -> float:
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        return time.monotonic() - t0

    return Dut(go.name, proc.pid, stop, go.stop), up


def start_wg_quick(
    a: NetNS, keys: KeyPair, peers: list[PeerSpec], address: str, workdir: str
) -> tuple[Dut, float]:
    name = unique_name("wtq")
    path = os.path.join(workdir, f"{name}.conf")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(wg_quick_config(keys.private, addresses=[address], peers=peers,
                                listen_port=51820))  # fmt: skip
    t0 = time.monotonic()
    a.run(*wg_quick_env(), "wg-quick", "up", path, timeout=1800)
    up = time.monotonic() - t0
    done = False

    def stop() -> float:
        nonlocal done
        t0 = time.monotonic()
        a.run(*wg_quick_env(), "wg-quick", "down", path, timeout=1800)
        done = True
        return time.monotonic() - t0

    def cleanup() -> None:
        if not done:
            a.run(*wg_quick_env(), "wg-quick", "down", path, check=False, timeout=1800)

    return Dut(name, None, stop, cleanup), up


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=10_000)
    parser.add_argument(
        "--impl", choices=["wiretun", "wireguard-go", "wg-quick"], default="wiretun"
    )
    parser.add_argument("--covered", action="store_true", help="peer /32s inside the Address")
    parser.add_argument("--shows", type=int, default=3)
    parser.add_argument(
        "--show-cmd", choices=["wg", "wiretun"], default="wg",
        help="time `wg show NAME` and `wg show NAME dump`, or `wiretun show NAME` and "
        "`wiretun show NAME --json` (this interpreter's wiretun)",
    )  # fmt: skip
    args = parser.parse_args()

    print(f"generating {args.peers} keys ...", flush=True)
    others = public_keys(args.peers - 1)
    address = "10.9.0.1/16" if args.covered else "10.9.0.1/24"
    with Topology() as topo, tempfile.TemporaryDirectory(prefix="many-peers-") as workdir:
        a, b = topo.netns(), topo.netns()
        topo.veth(a, b, "192.168.241.1/24", "192.168.241.2/24")
        live = WireguardGoPeer(b).start()
        dut_keys = KeyPair.generate()
        live.configure(listen_port=51821)
        live.add_peer(dut_keys.public, allowed_ips=["10.9.0.1/32"],
                      endpoint="192.168.241.1:51820", persistent_keepalive=1)  # fmt: skip
        live.link_up(["10.9.0.2/24"])
        peers = [PeerSpec(live.keys.public, ["10.9.0.2/32"], endpoint="192.168.241.2:51821")]
        peers += [PeerSpec(k, [peer_ip(i + 3, args.covered)]) for i, k in enumerate(others)]
        prober = Prober(b, a, "10.9.0.1").start()
        dut: Dut | None = None
        try:
            if args.impl == "wiretun":
                dut, up = start_wiretun(a, dut_keys, peers, address)
            elif args.impl == "wireguard-go":
                dut, up = start_wireguard_go(a, dut_keys, peers)
            else:
                dut, up = start_wg_quick(a, dut_keys, peers, address, workdir)
            routes = a.run("ip", "route", "show", "dev", dut.name).count("\n")
            # The live peer's handshake and a settled loop before the shows.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                time.sleep(0.5)
                recent = [r for t, r in prober.samples if t > time.monotonic() - 1]
                if recent and all(r is not None for r in recent[:-5]):
                    break
            idle_start = time.monotonic()
            time.sleep(2)
            idle = prober.window(idle_start, time.monotonic())
            shows = []
            for _ in range(args.shows):
                for label, cmd in show_commands(args.show_cmd, dut.name):
                    start, end, size = timed(["ip", "netns", "exec", a.name, *cmd])
                    shows.append((label, end - start, size, prober.window(start, end)))
                    time.sleep(0.3)
            rss = rss_kib(dut.pid) if dut.pid is not None else None
            down = dut.stop()
        finally:
            prober.stop()
            if dut is not None:
                dut.cleanup()
            live.stop()
    where = "covered by the Address (no routes)" if args.covered else "one route each"
    print(f"\n{args.impl}, {args.peers} peers ({where}); probes every "
          f"{PROBE_INTERVAL * 1000:.0f} ms through the live peer")  # fmt: skip
    rss_text = f"{rss / 1024:.0f} MiB" if rss is not None else "n/a"
    print(f"up: {up:.2f} s ({routes} routes on the device)   RSS after: {rss_text}")
    sent, lost, rtt, stall = idle
    print(f"idle 2 s: {sent} probes, {lost} lost, max RTT {rtt:.1f} ms")
    for label, seconds, size, (sent, lost, rtt, stall) in shows:
        print(f"{label:12s}: {seconds:.3f} s ({size / 1024:.0f} KiB); during it {sent} probes, "
              f"{lost} lost, max RTT {rtt:.1f} ms, longest stall {stall:.1f} ms")  # fmt: skip
    print(f"down: {down:.2f} s")
    med = statistics.median(s for _, s, _, _ in shows)
    worst = max(w[3] for _, _, _, w in shows)
    print(f"summary: up {up:.2f} s, show median {med:.3f} s, worst stall during a show "
          f"{worst:.1f} ms, down {down:.2f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    os.nice(0)
    sys.exit(main())
