"""Several `wiretun up` instances in one namespace: each takes its own routing table and mark
(Table=auto), so one stopping leaves the others' routes and rules alone; Table=off installs
none; `wg set NAME fwmark X` moves the policy rule with the mark."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from scenarios.leftovers import wiretun_leftovers
from wiretun.lab.netns import NetNS, Topology
from wiretun.lab.peers import (
    PeerSpec,
    WiretunPeer,
    have_wireguard_go,
    udp_ping,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not have_wireguard_go(), reason="needs wg"),
]

A_UNDER, B_UNDER = "192.168.241.1", "192.168.241.2"


def _pair(stack: ExitStack, a: NetNS, b: NetNS, i: int) -> tuple[WiretunPeer, WiretunPeer]:
    """Tunnel i: 10.i.0.1/32 in `a` (port 5182i) <-> 10.i.0.2/32 in `b` (port 5183i)."""
    near, far = stack.enter_context(WiretunPeer(a)), stack.enter_context(WiretunPeer(b))
    near.write_config(
        addresses=[f"10.{i}.0.1/32"],
        listen_port=51820 + i,
        peers=[PeerSpec(far.keys.public, [f"10.{i}.0.2/32"], endpoint=f"{B_UNDER}:{51830 + i}")],
    )
    far.write_config(
        addresses=[f"10.{i}.0.2/32"],
        listen_port=51830 + i,
        peers=[PeerSpec(near.keys.public, [f"10.{i}.0.1/32"], endpoint=f"{A_UNDER}:{51820 + i}")],
    )
    return near, far


def _fwmark(wt: WiretunPeer) -> int:
    """The mark `wg` reports (0 when it reports none)."""
    text = wt.wg("show", wt.name, "fwmark").strip()
    return 0 if text == "off" else int(text, 16 if text.startswith("0x") else 10)


def _rules(ns: NetNS) -> list[str]:
    return ns.run("ip", "rule").splitlines() + ns.run("ip", "-6", "rule").splitlines()


def _our_rules(ns: NetNS, mark: int) -> list[str]:
    return [ln for ln in _rules(ns) if re.search(rf"fwmark 0x{mark:x} lookup {mark}\b", ln)]


def _table(ns: NetNS, table: int) -> str:
    return ns.run("ip", "route", "show", "table", str(table), check=False).strip()


@pytest.fixture
def two_namespaces(topology: Topology) -> Iterator[tuple[NetNS, NetNS]]:
    a, b = topology.netns(), topology.netns()
    topology.veth(a, b, f"{A_UNDER}/24", f"{B_UNDER}/24")
    yield a, b


def _main_routes(ns: NetNS, name: str) -> str:
    return ns.run("ip", "route", "show", "dev", name, check=False).strip()


def test_two_instances_keep_their_own_routes(
    two_namespaces: tuple[NetNS, NetNS],
) -> None:
    a, b = two_namespaces
    with ExitStack() as stack:
        (one, one_far), (two, two_far) = _pair(stack, a, b, 1), _pair(stack, a, b, 2)
        for wt in (one, one_far, two, two_far):
            wt.start()
        # No default route: AllowedIPs go to the main table, no mark, no rule (as wg-quick).
        assert _fwmark(one) == _fwmark(two) == 0
        assert _main_routes(a, one.name) == "10.1.0.2 proto static"
        assert _main_routes(a, two.name) == "10.2.0.2 proto static"
        assert udp_ping(a, b, "10.1.0.2") == 3
        assert udp_ping(a, b, "10.2.0.2") == 3

        assert two.stop() == 0
        # The first tunnel's route survives; the second's is gone.
        assert _main_routes(a, one.name) == "10.1.0.2 proto static"
        assert udp_ping(a, b, "10.1.0.2") == 3
        assert one.name in a.run("ip", "route", "get", "10.1.0.2")
        assert a.run("ip", "route", "get", "10.2.0.2", check=False) == ""  # unreachable now
        two.start()
        assert udp_ping(a, b, "10.2.0.2") == 3


def test_table_off_installs_no_rule_and_reports_no_fwmark(
    two_namespaces: tuple[NetNS, NetNS],
) -> None:
    a, b = two_namespaces
    with ExitStack() as stack:
        near, far = _pair(stack, a, b, 1)
        assert near.config_path
        with open(near.config_path) as f:
            text = f.read()
        with open(near.config_path, "w") as f:
            f.write(text.replace("[Interface]\n", "[Interface]\nTable = off\n", 1))
        before = _rules(a)
        near.start()
        far.start()
        assert _fwmark(near) == 0  # wireguard-go omits fwmark=0; so do we
        assert "fwmark" not in near.wg("show", near.name)
        assert _rules(a) == before
        assert _table(a, 51820) == ""
        # With no route of ours the tunnel still carries what the admin routes into it.
        a.run("ip", "route", "add", "10.1.0.2/32", "dev", near.name)
        assert udp_ping(a, b, "10.1.0.2") == 3


def test_wg_set_fwmark_moves_the_rule(two_namespaces: tuple[NetNS, NetNS]) -> None:
    a, b = two_namespaces
    with ExitStack() as stack:
        near, far = _pair(stack, a, b, 1)
        with open(near.config_path) as f:
            text = f.read()
        with open(near.config_path, "w") as f:  # a default route: the fwmark table and rules
            f.write(text.replace("AllowedIPs = 10.1.0.2/32", "AllowedIPs = 10.1.0.2/32, ::/0"))
        near.start()
        far.start()
        assert udp_ping(a, b, "10.1.0.2") == 3
        near.wg("set", near.name, "fwmark", "0x1234")
        assert _fwmark(near) == 0x1234
        deadline = time.monotonic() + 5
        while not any("fwmark 0x1234 lookup 51820" in ln for ln in _rules(a)):
            assert time.monotonic() < deadline, _rules(a)
            time.sleep(0.05)
        assert not any("fwmark 0xca6c" in ln for ln in _rules(a)), _rules(a)
        # The tunnel's own (re-marked) UDP still bypasses the table: traffic flows.
        assert udp_ping(a, b, "10.1.0.2") == 3
        # Mark 0 would pull the tunnel's own packets into its table: refused.
        with pytest.raises(RuntimeError):
            near.wg("set", near.name, "fwmark", "0")
        assert _fwmark(near) == 0x1234
        assert near.stop() == 0
        assert not any("0x1234" in ln for ln in _rules(a)), _rules(a)


def test_wiretun_leftovers_sees_any_rule_of_ours(
    two_namespaces: tuple[NetNS, NetNS],
) -> None:
    """wiretun_leftovers finds our rule whatever table it points at."""
    a, _ = two_namespaces

    a.run("ip", "rule", "add", "not", "fwmark", "0x77", "table", "77", "priority", "22356")
    try:
        assert any(item.startswith("rule ") for item in wiretun_leftovers(a, "nonexistent0"))
    finally:
        subprocess.run(
            ["ip", "netns", "exec", a.name, "ip", "rule", "del", "priority", "22356"], check=False
        )
