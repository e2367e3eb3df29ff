#!/usr/bin/env python3
"""Where the tunnel's CPU goes: per-thread user/sys CPU-s per GB of both tunnel processes
during single-stream iperf3 runs, for wiretun variants and wireguard-go, interleaved.

    .venv/bin/python scripts/perf_threads.py [--time 6] [--rounds 2] [--wg-go] \
        [--variant LABEL[@SRCDIR][:ARGS]]... [--strace 2]

A variant runs `python -m wiretun up ... ARGS` with SRCDIR first on PYTHONPATH (e.g. a
`git worktree` of the baseline), so old and new code run side by side in one invocation.
Threads are named from one `py-spy dump` per process (MainThread, tun-*-r0, tun-*-w0, ...).
"send" is the process that encrypts the iperf3 payload, "recv" the one that decrypts it.
Needs root, iperf3, py-spy (and wireguard-go, wg for --wg-go; strace for --strace).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wiretun.lab.netns import NetNS, Topology
from wiretun.lab.peers import PeerSpec, WireguardGoPeer, WiretunPeer, udp_ping

A_UNDER, B_UNDER = "192.168.243.1", "192.168.243.2"
A_OVER, B_OVER = "10.11.0.1", "10.11.0.2"
CLK = os.sysconf("SC_CLK_TCK")
PY_SPY = str(Path(sys.executable).parent / "py-spy")
STATS = "--stats" in sys.argv  # print each wiretun end's teardown counters


@dataclass(frozen=True)
class Variant:
    label: str
    src: str | None  # prepended to PYTHONPATH; None: wireguard-go
    args: tuple[str, ...] = ()


def parse_variant(text: str) -> Variant:
    head, _, args = text.partition(":")
    label, _, src = head.partition("@")
    return Variant(label, os.path.abspath(src) if src else "", tuple(shlex.split(args)))


class _Peer(WiretunPeer):
    src: str = ""

    def command(self, *args: str) -> list[str]:
        if not self.src:
            return super().command(*args)
        env = f"PYTHONPATH={self.src}"
        return ["env", env, sys.executable, "-m", "wiretun", *args]


@contextlib.contextmanager
def pair(a: NetNS, b: NetNS, v: Variant) -> Iterator[tuple[int, int]]:
    """Both tunnel ends up; yields (pid at a, pid at b)."""
    if v.src is None:
        with WireguardGoPeer(a).start() as wa, WireguardGoPeer(b).start() as wb:
            wa.configure(listen_port=51830)
            wb.configure(listen_port=51831)
            wa.add_peer(wb.keys.public, allowed_ips=[f"{B_OVER}/32"], endpoint=f"{B_UNDER}:51831")
            wb.add_peer(wa.keys.public, allowed_ips=[f"{A_OVER}/32"], endpoint=f"{A_UNDER}:51830")
            wa.link_up([f"{A_OVER}/24"])
            wb.link_up([f"{B_OVER}/24"])
            assert wa.proc is not None and wb.proc is not None
            yield _inner_pid(wa.proc.pid), _inner_pid(wb.proc.pid)
        return
    ta, tb = _Peer(a), _Peer(b)
    ta.src = tb.src = v.src
    with ta, tb:
        ta.write_config(
            addresses=[f"{A_OVER}/24"],
            listen_port=51830,
            peers=[PeerSpec(tb.keys.public, [f"{B_OVER}/32"], endpoint=f"{B_UNDER}:51831")],
        )
        tb.write_config(
            addresses=[f"{B_OVER}/24"],
            listen_port=51831,
            peers=[PeerSpec(ta.keys.public, [f"{A_OVER}/32"], endpoint=f"{A_UNDER}:51830")],
        )
        ta.start(*v.args, verbose=1 if STATS else 0)
        tb.start(*v.args, verbose=1 if STATS else 0)
        assert ta.proc is not None and tb.proc is not None
        yield _inner_pid(ta.proc.pid), _inner_pid(tb.proc.pid)
        if STATS:
            for end, peer in (("a", ta), ("b", tb)):
                peer.stop()
                for line in peer.log_text().splitlines():
                    if re.search(r": (loop|udp|tun) ", line):
                        print(f"  {v.label} {end}: {line[line.find(' - ') + 3 :]}")


def _inner_pid(pid: int) -> int:
    """`ip netns exec` and `env` exec in place, so the Popen pid is the process itself."""
    return pid


def thread_names(pid: int) -> dict[int, str]:
    out = subprocess.run(
        [PY_SPY, "dump", "--pid", str(pid)], capture_output=True, text=True, check=False
    )
    names = {
        int(m[1]): m[2]
        for m in re.finditer(r'^Thread (\d+) \([^)]*\): "([^"]*)"', out.stdout, re.M)
    }
    return names


def group_of(name: str) -> str:
    if name == "MainThread":
        return "main"
    if m := re.match(r"tun-.*-([rw])\d+$", name):
        return "tun-reader" if m[1] == "r" else "tun-writer"
    return "other"


def thread_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """tid -> (user s, sys s)."""
    out: dict[int, tuple[float, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            f = stat[stat.rindex(")") + 2 :].split()
            out[int(tid)] = (int(f[11]) / CLK, int(f[12]) / CLK)
    return out


def iperf(a: NetNS, b: NetNS, seconds: float, reverse: bool) -> tuple[float, int, int]:
    """(Gbit/s received, bytes received, retransmits) of one TCP stream a->b (b->a if reverse)."""
    srv = b.popen("iperf3", "-s", "-1", "-B", B_OVER, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while "5201" not in b.run("ss", "-ltnH"):
            if time.monotonic() > deadline:
                raise RuntimeError("iperf3 server did not start")
            time.sleep(0.05)
        args = ["iperf3", "-c", B_OVER, "-t", f"{seconds:g}", "-J"] + (["-R"] if reverse else [])
        result: dict[str, Any] = json.loads(a.run(*args, timeout=seconds + 30))
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.wait()
    end = result["end"]
    recv = end["sum_received"]
    return (
        recv["bits_per_second"] / 1e9,
        int(recv["bytes"]),
        int(end["sum_sent"].get("retransmits", 0)),
    )


def strace_counts(pid: int, seconds: float) -> str:
    proc = subprocess.Popen(
        ["strace", "-c", "-f", "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(seconds)
    proc.send_signal(2)
    _, err = proc.communicate(timeout=10)
    return err


def pyspy_top(pid: int, seconds: float, limit: int = 40) -> str:
    """Top functions by own (self) and inclusive samples while holding the GIL."""
    with tempfile.NamedTemporaryFile(suffix=".txt") as f:
        subprocess.run(
            [PY_SPY, "record", "--gil", "--threads", "--format", "raw", "--rate", "250",
             "-d", f"{seconds:g}", "-o", f.name, "--pid", str(pid)],
            capture_output=True, check=False,
        )  # fmt: skip
        lines = Path(f.name).read_text().splitlines()
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = [re.sub(r" \(.*?/", " (", fr) for fr in stack.split(";")]
        total += int(n)
        own[frames[-1]] += int(n)
        for fr in {re.sub(r":\d+\)$", ")", fr) for fr in frames[1:]}:
            incl[fr] += int(n)
    out = [f"{total} GIL samples; own:"]
    out += [f"  {100 * c / total:5.1f}% {fr}" for fr, c in own.most_common(limit)]
    out.append("inclusive:")
    out += [f"  {100 * c / total:5.1f}% {fr}" for fr, c in incl.most_common(limit)]
    return "\n".join(out)


def _trace(texts: dict[str, str], role: str, pid: int, seconds: float, pyspy: bool = False) -> None:
    time.sleep(1.0)  # past iperf3's start
    texts[role] = pyspy_top(pid, seconds) if pyspy else strace_counts(pid, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--time", type=float, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--wg-go", action="store_true")
    parser.add_argument("--variant", action="append", default=[], type=parse_variant)
    parser.add_argument("--strace", type=float, default=0, help="seconds of strace -c per process")
    parser.add_argument("--pyspy", type=float, default=0, help="seconds of py-spy --gil")
    parser.add_argument("--stats", action="store_true", help="print teardown counters")
    parser.add_argument("--json", type=Path, help="write every run here")
    opts = parser.parse_args()
    variants: list[Variant] = list(opts.variant) or [Variant("wiretun", "")]
    if opts.wg_go:
        variants.append(Variant("wireguard-go", None))
    runs: list[dict[str, Any]] = []
    with Topology("wtperf") as topo:
        a, b = topo.netns(), topo.netns()
        topo.veth(a, b, f"{A_UNDER}/24", f"{B_UNDER}/24")
        for rnd in range(opts.rounds):
            for v in variants:
                with pair(a, b, v) as (pa, pb):
                    if udp_ping(a, b, B_OVER) == 0:
                        raise RuntimeError(f"{v.label}: no connectivity")
                    names = (
                        {pa: thread_names(pa), pb: thread_names(pb)} if v.src is not None else {}
                    )
                    for direction, reverse in (("tcp", False), ("tcp-rev", True)):
                        sender, receiver = (pb, pa) if reverse else (pa, pb)
                        before = {p: thread_cpu(p) for p in (pa, pb)}
                        tracers = []
                        texts: dict[str, str] = {}
                        spy = bool(opts.pyspy)
                        if (opts.strace or spy) and rnd == 0:
                            tracers = [
                                threading.Thread(
                                    target=_trace,
                                    args=(texts, r, p, opts.pyspy or opts.strace, spy),
                                )
                                for r, p in (("send", sender), ("recv", receiver))
                            ]
                            for th in tracers:
                                th.start()
                        t0 = time.monotonic()
                        gbps, nbytes, retr = iperf(a, b, opts.time, reverse)
                        for th in tracers:
                            th.join()
                        straced = "\n".join(f"--- {r} ---\n{t}" for r, t in texts.items())
                        wall = time.monotonic() - t0
                        after = {p: thread_cpu(p) for p in (pa, pb)}
                        gb = nbytes / 1e9
                        rec: dict[str, Any] = {
                            "variant": v.label, "round": rnd, "workload": direction,
                            "gbps": gbps, "retr": retr, "gb": gb, "wall": wall,
                        }  # fmt: skip
                        total = 0.0
                        for role, pid in (("send", sender), ("recv", receiver)):
                            groups: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
                            for tid, (u, s) in after[pid].items():
                                u0, s0 = before[pid].get(tid, (0.0, 0.0))
                                g = (
                                    group_of(names.get(pid, {}).get(tid, "other"))
                                    if names
                                    else "all"
                                )
                                groups[g][0] += u - u0
                                groups[g][1] += s - s0
                            for g, (u, s) in groups.items():
                                rec[f"{role}.{g}.user"] = u / gb
                                rec[f"{role}.{g}.sys"] = s / gb
                                total += u + s
                        rec["cpu_per_gb"] = total / gb
                        runs.append(rec)
                        print(
                            f"{v.label:16} {direction:8} r{rnd} {gbps:5.2f} Gbit/s retr {retr:5d} "
                            f"{rec['cpu_per_gb']:5.2f} CPU-s/GB",
                            flush=True,
                        )
                        if straced:
                            print(straced, flush=True)
    print("\nmedians, CPU-s per GB (user/sys) by process role and thread group:")
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        by[(r["variant"], r["workload"])].append(r)
    for (label, wl), rs in by.items():
        keys = sorted({k for r in rs for k in r if k.count(".") == 2 and k.endswith(".user")})
        parts = []
        for k in keys:
            base = k.removesuffix(".user")
            u = statistics.median(r.get(k, 0.0) for r in rs)
            s = statistics.median(r.get(base + ".sys", 0.0) for r in rs)
            parts.append(f"{base} {u:.2f}/{s:.2f}")
        gbps = statistics.median(r["gbps"] for r in rs)
        cpu = statistics.median(r["cpu_per_gb"] for r in rs)
        retr = statistics.median(r["retr"] for r in rs)
        print(f"{label:16} {wl:8} {gbps:5.2f} Gbit/s {cpu:5.2f} CPU-s/GB retr {retr:g}")
        print("    " + "; ".join(parts))
    if opts.json:
        opts.json.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
