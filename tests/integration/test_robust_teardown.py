"""Teardown (issue #8): 20 start/SIGTERM cycles of one interface leave no device, policy
rule, route, table entry, UDP or UAPI socket, pid file or process behind."""

from __future__ import annotations

import pytest

from scenarios.cycles import run_cycles
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
        assert kinds == {"device", "rule", "route", "udp", wt.socket_path, wt.pid_path, record}, (
            left
        )
        assert wt.stop() == 0
        assert wiretun_leftovers(a, wt.name, listen_port=51820) == []
