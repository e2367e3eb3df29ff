"""Tests for wiretun.lab.netns: names, commands, and (as root) namespaces and veth pairs that
are removed whatever happens."""

from __future__ import annotations

import os
import socket
import time

import pytest

from wiretun.lab.netns import NetNS, Topology, run, unique_name


def _namespaces() -> set[str]:
    return {line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line}


def test_unique_name_fits_and_differs() -> None:
    names = {unique_name("va") for _ in range(50)}
    assert len(names) == 50
    assert all(n.startswith("va") and len(n) == 10 for n in names)
    assert len(unique_name("a-very-long-prefix-")) == 15  # IFNAMSIZ - 1
    assert len(unique_name("ns-", 30)) == 11


def test_run_returns_stdout_and_raises_with_stderr() -> None:
    assert run(["sh", "-c", "echo out"]) == "out\n"
    with pytest.raises(RuntimeError, match=r"failed \(3\): why"):
        run(["sh", "-c", "echo why >&2; exit 3"])
    assert run(["sh", "-c", "exit 3"], check=False) == ""


@pytest.mark.root
def test_topology_joins_namespaces_and_removes_them_even_on_error() -> None:
    made: list[str] = []
    with pytest.raises(KeyError), Topology("wtlabt") as topo:
        a, b = topo.netns(), topo.netns()
        made = [a.name, b.name]
        va, vb = topo.veth(a, b, "192.168.251.1/24", "192.168.251.2/24", mtu=1400)
        assert "mtu 1400" in a.run("ip", "link", "show", "dev", va)
        assert "192.168.251.2/24" in b.run("ip", "-o", "addr", "show", "dev", vb)
        with b.enter():  # this thread is in b for the block: its sockets stay there
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("192.168.251.2", 0))  # an address only b has
        finally:
            sock.close()
        raise KeyError("a test failing in the middle")
    assert made and not set(made) & _namespaces()


@pytest.mark.root
def test_delete_kills_what_still_runs_inside() -> None:
    ns = NetNS.create("wtlabk")
    proc = ns.popen("sleep", "60")
    try:
        # Wait until the process has entered the namespace (and exec'd sleep): deleting it
        # earlier makes `ip netns exec` itself fail (exit 255), which is not what is tested.
        deadline = time.monotonic() + 10
        while str(proc.pid) not in run(["ip", "netns", "pids", ns.name]).split():
            assert time.monotonic() < deadline, "sleep never entered the namespace"
            time.sleep(0.01)
        ns.delete()
        assert proc.wait(10) == -9
        assert ns.name not in _namespaces()
        ns.delete()  # twice is fine
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, 9)
            proc.wait()
