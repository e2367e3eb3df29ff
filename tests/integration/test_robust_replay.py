"""Replay (issue #8): a recording relay in a middle namespace captures real initiation and
transport datagrams between wireguard-go and wiretun and re-sends them later from the same
address and port; wiretun rejects them all and delivers nothing twice."""

from __future__ import annotations

import socket
import time

import pytest

from scenarios.traffic import SeqReceiver, core_drops, send_sequence
from scenarios.udprelay import UdpRelay
from wiretun.lab.netns import Topology
from wiretun.lab.peers import PeerSpec, WireguardGoPeer, WiretunPeer, have_wireguard_go
from wiretun.wireguard.messages import MSG_INITIATION, MSG_TRANSPORT

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not have_wireguard_go(), reason="needs wireguard-go and wg"),
]

TAG = b"wiretun-replay"
FIRST, SECOND = 200, 100  # datagrams before and after the replay


def test_replayed_initiation_and_transport_are_rejected(topology: Topology) -> None:
    a, relay_ns, b = topology.netns(), topology.netns(), topology.netns()
    topology.veth(a, relay_ns, "192.168.241.1/24", "192.168.241.2/24")
    topology.veth(relay_ns, b, "192.168.242.1/24", "192.168.242.2/24")
    with relay_ns.enter():
        relay = UdpRelay.open("192.168.241.2", 51820, "192.168.242.1", ("192.168.242.2", 51821))
    with relay.start(), WireguardGoPeer(a).start() as wg, WiretunPeer(b) as wt:
        # wiretun learns wireguard-go's endpoint (the relay's B side) from the handshake.
        wt.write_config(
            addresses=["10.9.0.1/24"],
            listen_port=51821,
            peers=[PeerSpec(wg.keys.public, ["10.9.0.2/32"])],
        )
        wt.start()
        wg.configure(listen_port=51822)
        wg.add_peer(wt.keys.public, allowed_ips=["10.9.0.1/32"], endpoint="192.168.241.2:51820")
        wg.link_up(["10.9.0.2/24"])

        with b.enter():
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rx.bind(("10.9.0.1", 0))
        receiver = SeqReceiver(rx, TAG).start()
        with a.enter():
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            send_sequence(tx, receiver.address, TAG, 0, FIRST, interval=0.002)
            assert receiver.wait_for(FIRST, timeout=10), len(receiver.count.received)

            captured = list(relay.recorded.a_to_b)
            initiations = [d for d in captured if d[0] == MSG_INITIATION]
            transports = [d for d in captured if d[0] == MSG_TRANSPORT]
            data = [d for d in transports if len(d) > 32]
            assert initiations and len(data) >= FIRST

            time.sleep(1.0)  # "later": the session is idle, the window has moved on
            relay.inject(initiations)
            relay.inject(transports)
            relay.inject(list(reversed(transports)))  # order must not matter to the window
            relay.inject(initiations)

            # The session survived the replayed initiation: new data still flows.
            send_sequence(tx, receiver.address, TAG, FIRST, SECOND, interval=0.002)
            assert receiver.wait_for(FIRST + SECOND, timeout=10)
            time.sleep(0.5)  # let any (wrong) late duplicate arrive before counting
        finally:
            tx.close()
            count = receiver.stop()

        assert set(count.received) == set(range(FIRST + SECOND))
        assert count.duplicates == 0, count.duplicates
        assert count.foreign == 0
        drops = core_drops(wt.stats())
        print(
            f"captured {len(initiations)} initiation(s), {len(transports)} transport(s); "
            f"replayed each twice; drops {drops}"
        )
        assert drops.get("handshake_replay", 0) == 2 * len(initiations)
        assert drops.get("replay", 0) == 2 * len(transports)
        assert drops.get("decrypt", 0) == 0
        assert wt.stop() == 0
