"""Teardown (issue #8): 20 start/SIGTERM cycles of one interface leave no device, policy
rule, route, table entry, UDP or UAPI socket, pid file or process behind. Crash recovery
(#15): start/SIGKILL cycles of a Table = auto full tunnel do not pile up rules or tables,
each `up` removing what the killed one left; SIGHUP tears down as SIGTERM does (wireguard-go
dies of it, leaving its socket), unless it was ignored when we started (nohup)."""

from __future__ import annotations

import shutil
import signal
import subprocess

import pytest

from scenarios.cycles import run_cycles, run_kill_cycles, wait_up
from scenarios.leftovers import wiretun_leftovers
from wiretun.lab.netns import Topology, run
from wiretun.lab.peers import KeyPair, PeerSpec, WiretunPeer

pytestmark = [pytest.mark.root, pytest.mark.slow]

CYCLES = 20
HANG = 10.0  # seconds: a cycle this slow is stuck, not slow (scripts/teardown_cycles.py times)


def test_twenty_start_sigterm_cycles_leave_nothing(topology: Topology) -> None:
    a, b = topology.netns(), topology.netns()
    topology.veth(a, b, "192.168.241.1/24", "192.168.241.2/24")
    cycles = run_cycles(a, CYCLES)
    times = ", ".join(f"{c.seconds:.2f}" for c in cycles)
    print(f"cycle seconds: {times}")
    assert len(cycles) == CYCLES
    for i, c in enumerate(cycles):
        assert c.exit_code == 0, i
        assert c.leftovers == (), (i, c.leftovers)
        assert c.seconds < HANG, (i, c)
    assert run(["ip", "netns", "pids", a.name]).strip() == ""  # no process left inside
    # The rules and table are per namespace: nothing of ours in it at all any more.
    assert a.run("ip", "rule").strip() == b.run("ip", "rule").strip()


def test_the_leftover_check_sees_a_running_instance(topology: Topology) -> None:
    """The check above is only worth something if it sees each kind of resource."""
    a, b = topology.netns(), topology.netns()
    topology.veth(a, b, "192.168.241.1/24", "192.168.241.2/24")
    with WiretunPeer(a) as wt:
        wt.write_config(
            addresses=["10.9.0.1/24", "fd00:9::1/64"],
            listen_port=51820,
            peers=[PeerSpec(KeyPair.generate().public, ["0.0.0.0/0", "::/0"])],
        )
        wt.start()
        left = wiretun_leftovers(a, wt.name, listen_port=51820)
        kinds = {item.split()[0] for item in left}
        record = wt.pid_path.removesuffix(".pid") + ".installed"  # the rules, for a crash
        want = {"device", "rule", "route", "udp", wt.socket_path, wt.pid_path, record}
        if shutil.which("nft"):
            want.add("nft")  # wg-quick's firewall tables for a default route
        assert kinds == want, left
        assert wt.stop() == 0
        assert wiretun_leftovers(a, wt.name, listen_port=51820) == []


KILL_CYCLES = 4  # scripts/teardown_cycles.py --kill runs 20


def test_sigkill_then_up_cycles_do_not_pile_up(topology: Topology) -> None:
    a, b = topology.netns(), topology.netns()
    topology.veth(a, b, "192.168.241.1/24", "192.168.241.2/24")
    cycles, last, left = run_kill_cycles(a, KILL_CYCLES)
    first = cycles[0]
    # A full tunnel's rules: per family "not fwmark T lookup T" and "suppress_prefixlength 0".
    assert len(first.rules) == 4 and all("51820" in r or "suppress" in r for r in first.rules)
    for i, c in enumerate(cycles):
        assert c.exit_code == -signal.SIGKILL, i
        assert c.rules == first.rules, (i, c.rules)  # the same table and rules every time
        kinds = {item.split()[0] for item in c.after_kill}
        assert "device" not in kinds and "udp" not in kinds, c.after_kill  # gone with the fds
        assert "rule" in kinds, c.after_kill  # the kill left them: the next up must remove them
    assert last == 0
    assert left == [], left
    assert a.run("ip", "rule").strip() == b.run("ip", "rule").strip()


def _full_tunnel(wt: WiretunPeer) -> None:
    wt.write_config(
        addresses=["10.9.0.1/24", "fd00:9::1/64"],
        listen_port=51820,
        peers=[PeerSpec(KeyPair.generate().public, ["0.0.0.0/0", "::/0"])],
    )


def test_sighup_tears_down_like_sigterm(topology: Topology) -> None:
    a, b = topology.netns(), topology.netns()
    topology.veth(a, b, "192.168.241.1/24", "192.168.241.2/24")
    with WiretunPeer(a) as wt:
        _full_tunnel(wt)
        wt.start()
        assert wiretun_leftovers(a, wt.name, listen_port=51820)  # up: rules, table, sockets
        assert wt.proc is not None
        wt.proc.send_signal(signal.SIGHUP)
        assert wt.proc.wait(15) == 0, wt.log_text()
        assert "stopping: SIGHUP" in wt.log_text()
        wt.proc = None
        assert wiretun_leftovers(a, wt.name, listen_port=51820) == []


def test_sighup_ignored_at_start_stays_ignored(topology: Topology) -> None:
    """As a Go program (wireguard-go) keeps a SIGHUP that was ignored when it started
    (`nohup`) ignored."""
    a, _ = topology.netns(), topology.netns()
    with WiretunPeer(a) as wt:
        _full_tunnel(wt)
        wt.start()
        assert wt.proc is not None
        wt.stop()
        nohup = subprocess.Popen(
            ["nohup", "ip", "netns", "exec", a.name, *wt.command("-v", "up", wt.config_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wt.proc = nohup
        try:
            wait_up(wt)
            nohup.send_signal(signal.SIGHUP)
            with pytest.raises(subprocess.TimeoutExpired):
                nohup.wait(1.0)
            assert wt.name in a.run("ip", "-o", "link")
        finally:
            assert wt.stop() == 0
        assert wiretun_leftovers(a, wt.name, listen_port=51820) == []
