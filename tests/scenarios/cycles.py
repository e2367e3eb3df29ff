"""Start/SIGTERM and start/SIGKILL cycles of `wiretun up` under one interface name, timing
each phase and listing whatever a cycle left behind (shared by the teardown tests and
scripts/teardown_cycles.py)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from scenarios.leftovers import wiretun_leftovers
from wiretun.lab.netns import NetNS, unique_name
from wiretun.lab.peers import KeyPair, PeerSpec, WiretunPeer
from wiretun.tunnel.pidfile import read_pid_file

LISTEN_PORT = 51820


@dataclass(frozen=True)
class Cycle:
    up_seconds: float  # from exec to the pid file and UAPI socket being there
    down_seconds: float  # from SIGTERM to the process having exited
    exit_code: int
    leftovers: tuple[str, ...]

    @property
    def seconds(self) -> float:
        return self.up_seconds + self.down_seconds


def run_cycles(ns: NetNS, count: int, *, name: str | None = None) -> list[Cycle]:
    """`count` sequential start/SIGTERM cycles of the same interface in `ns` (which needs
    an underlay route to 192.168.241.2). What a cycle leaves is checked before any cleanup
    of ours runs, so a leak shows in that cycle's `leftovers`."""
    name = name or unique_name("wtc")
    keys, peer = KeyPair.generate(), KeyPair.generate()
    cycles: list[Cycle] = []
    for _ in range(count):
        with WiretunPeer(ns, name=name, keys=keys) as wt:
            wt.write_config(
                addresses=["10.9.0.1/24", "fd00:9::1/64"],
                listen_port=LISTEN_PORT,
                peers=[
                    PeerSpec(
                        peer.public,
                        ["10.9.0.0/24", "fd00:9::/64"],
                        endpoint="192.168.241.2:51821",
                        persistent_keepalive=1,
                    )
                ],
            )
            start = time.monotonic()
            wt.start()
            up = time.monotonic() - start
            assert wt.proc is not None
            start = time.monotonic()
            wt.proc.send_signal(signal.SIGTERM)
            code = wt.proc.wait(30)
            down = time.monotonic() - start
            left = wiretun_leftovers(ns, name, listen_port=LISTEN_PORT)
            cycles.append(Cycle(up, down, code, tuple(left)))
    return cycles


@dataclass(frozen=True)
class KillCycle:
    up_seconds: float  # from exec to the pid file naming the new process
    rules: tuple[str, ...]  # the policy rules while it ran (after it recovered the last crash)
    exit_code: int  # -SIGKILL
    after_kill: tuple[str, ...]  # what the kill left (for the next `up` to remove)


def wait_up(wt: WiretunPeer, timeout: float = 20.0) -> None:
    """Until the pid file names the new process (a killed one's is still there at first)."""
    assert wt.proc is not None
    deadline = time.monotonic() + timeout
    while True:
        found = read_pid_file(wt.pid_path)
        if found is not None and found.pid == wt.proc.pid and os.path.exists(wt.socket_path):
            return
        if wt.proc.poll() is not None:
            raise RuntimeError(f"wiretun exited early: {wt.log_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"wiretun not up after {timeout}s: {wt.log_text()}")
        time.sleep(0.02)


def _rules(ns: NetNS) -> tuple[str, ...]:
    kernel = {"0", "32766", "32767"}
    return tuple(
        f"{family} {ln.strip()}"
        for family in ("-4", "-6")
        for ln in ns.run("ip", family, "rule").splitlines()
        if ln.split(":")[0] not in kernel
    )


def run_kill_cycles(ns: NetNS, count: int, *, name: str | None = None) -> tuple[
    list[KillCycle], int, list[str]
]:  # fmt: skip
    """`count` cycles of `up` (a full tunnel: Table = auto, policy rules, a fwmark table,
    nftables) then SIGKILL, each `up` finding what the previous one left; then a last `up`
    stopped with SIGTERM. Nothing of ours cleans between cycles: only `up` itself. Returns
    the cycles, the last exit code and what was left at the end."""
    name = name or unique_name("wtk")
    keys, peer = KeyPair.generate(), KeyPair.generate()
    cycles: list[KillCycle] = []
    with WiretunPeer(ns, name=name, keys=keys) as wt:
        wt.write_config(
            addresses=["10.9.0.1/24", "fd00:9::1/64"],
            listen_port=LISTEN_PORT,
            peers=[PeerSpec(peer.public, ["0.0.0.0/0", "::/0"], endpoint="192.168.241.2:51821")],
        )
        for _ in range(count):
            start = time.monotonic()
            wt.start()
            wait_up(wt)
            up = time.monotonic() - start
            rules = _rules(ns)
            assert wt.proc is not None
            wt.proc.kill()
            code = wt.proc.wait(30)
            wt.proc = None  # killed and reaped: stop() must not clean up after it
            left = wiretun_leftovers(ns, name, listen_port=LISTEN_PORT)
            cycles.append(KillCycle(up, rules, code, tuple(left)))
        wt.start()
        wait_up(wt)
        assert wt.proc is not None
        wt.proc.send_signal(signal.SIGTERM)
        last = wt.proc.wait(30)
        wt.proc = None
        left = wiretun_leftovers(ns, name, listen_port=LISTEN_PORT)
    return cycles, last, left
