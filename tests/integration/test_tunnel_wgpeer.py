"""The wireguard-go harness on its own: two wireguard-go peers in namespaces, ping across."""

from __future__ import annotations

import os

import pytest

from wiretun.lab.netns import Topology
from wiretun.lab.peers import WireguardGoPeer, generate_psk, have_wireguard_go, udp_ping

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not have_wireguard_go(), reason="needs wireguard-go and wg"),
]


def test_wireguard_go_pair_reaches_each_other_v4_and_v6(topology: Topology) -> None:
    a, b = topology.netns(), topology.netns()
    topology.veth(a, b, "192.168.241.1/24", "192.168.241.2/24")
    psk = generate_psk()
    with WireguardGoPeer(a).start() as wa, WireguardGoPeer(b).start() as wb:
        wa.configure(listen_port=51820)
        wb.configure(listen_port=51821)
        wa.add_peer(
            wb.keys.public,
            allowed_ips=["10.9.0.2/32", "fd00:9::2/128"],
            endpoint="192.168.241.2:51821",
            preshared_key=psk,
        )
        wb.add_peer(
            wa.keys.public,
            allowed_ips=["10.9.0.1/32", "fd00:9::1/128"],
            endpoint="192.168.241.1:51820",
            preshared_key=psk,
        )
        wa.link_up(["10.9.0.1/24", "fd00:9::1/64"])
        wb.link_up(["10.9.0.2/24", "fd00:9::2/64"])
        assert udp_ping(a, b, "10.9.0.2") == 3
        assert udp_ping(b, a, "fd00:9::1") == 3
        _, peers = wa.dump()
        assert [p.public_key for p in peers] == [wb.keys.public]
        assert peers[0].latest_handshake > 0
        assert peers[0].preshared_key == psk
        assert peers[0].rx_bytes > 0 and peers[0].tx_bytes > 0
        sock = wa.socket_path
    assert not os.path.exists(sock)
    assert "wgg" not in a.run("ip", "-o", "link")
