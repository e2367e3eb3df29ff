"""Tests for wiretun.lab.peers: reading `wg show dump`, and (as root) peers that come up when
they say so, fail with their own words, and leave nothing behind."""

from __future__ import annotations

import os

import pytest

from wiretun.lab.netns import Topology
from wiretun.lab.peers import (
    PeerSpec,
    WireguardGoPeer,
    WiretunPeer,
    have_wireguard_go,
    parse_dump,
    udp_ping,
)
from wiretun.lab.procs import StartError

DUMP = (
    "cHJpdmF0ZQ==\tcHVibGlj\t51820\toff\n"
    "UEVFUjE=\t(none)\t192.0.2.1:51821\t10.9.0.2/32,fd00:9::2/128\t1700000000\t100\t200\t25\n"
    "UEVFUjI=\tUFNL\t(none)\t(none)\t0\t0\t0\toff\n"
)


def test_parse_dump() -> None:
    iface, (one, two) = parse_dump(DUMP)
    assert iface == ["cHJpdmF0ZQ==", "cHVibGlj", "51820", "off"]
    assert (one.endpoint, one.allowed_ips) == ("192.0.2.1:51821", ["10.9.0.2/32", "fd00:9::2/128"])
    assert (one.latest_handshake, one.rx_bytes, one.tx_bytes) == (1700000000, 100, 200)
    assert (two.preshared_key, two.allowed_ips, two.persistent_keepalive) == ("UFNL", [], "off")
    with pytest.raises(ValueError, match="empty"):
        parse_dump("\n")


@pytest.mark.root
def test_wiretun_peer_is_up_when_start_returns_and_its_log_goes_on(topology: Topology) -> None:
    a, b = topology.netns(), topology.netns()
    topology.veth(a, b, "192.168.252.1/24", "192.168.252.2/24")
    with WiretunPeer(a) as left, WiretunPeer(b) as right:
        left.write_config(
            addresses=["10.9.0.1/24"],
            listen_port=51820,
            peers=[PeerSpec(right.keys.public, ["10.9.0.2/32"], "192.168.252.2:51820")],
        )
        right.write_config(
            addresses=["10.9.0.2/24"],
            listen_port=51820,
            peers=[PeerSpec(left.keys.public, ["10.9.0.1/32"], "192.168.252.1:51820")],
        )
        left.start()
        right.start()
        # Nothing polled for: start() returned on the readiness pipe, all is in place.
        assert os.path.exists(left.socket_path) and os.path.exists(left.pid_path)
        assert "UP" in a.run("ip", "link", "show", "dev", left.name)
        assert udp_ping(a, b, "10.9.0.2") == 3
        assert left.stop() == 0
        # The log kept going after 'ready': the teardown lines are in it.
        assert "core drops" in left.log_text()
    assert not os.path.exists(left.socket_path)


@pytest.mark.root
def test_wiretun_peer_that_cannot_start_says_why_and_leaves_nothing(topology: Topology) -> None:
    a = topology.netns()
    with WiretunPeer(a) as wt:
        wt.write_config(addresses=["10.9.0.1/24"], peers=[], extra="Table = nonsense!")
        with pytest.raises(StartError, match=r"exited with 2 before it was up: .*Table"):
            wt.start()
        assert wt.proc is None
        assert wt.name not in a.run("ip", "link")


@pytest.mark.root
@pytest.mark.skipif(not have_wireguard_go(), reason="wireguard-go and wg not installed")
def test_wireguard_go_peer_takes_wg_set_at_once_and_stop_removes_it(topology: Topology) -> None:
    a = topology.netns()
    with WireguardGoPeer(a).start() as wg:
        wg.configure(listen_port=51830)  # right after start: the socket is served
        assert wg.dump()[0][2] == "51830"
        wg.link_up(["10.9.0.2/24"])
        assert "mtu 1420" in a.run("ip", "link", "show", "dev", wg.name)
    assert not os.path.exists(wg.socket_path)
    assert wg.name not in a.run("ip", "link")
