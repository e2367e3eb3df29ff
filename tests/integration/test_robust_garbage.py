"""Live garbage (issue #8): while iperf3 runs through the tunnel, random datagrams and mutated
valid messages of all four types hit wiretun's UDP port; the tunnel keeps carrying traffic,
the process survives, and every kind of garbage shows up in its drop counters."""

from __future__ import annotations

import random

import pytest

from scenarios.hostile import (
    GarbageMaker,
    Sprayer,
    packet_socket,
    read_udp_payloads,
    stranger_initiation,
    udp_sockets,
)
from scenarios.interop import wireguard_go_initiates_to
from scenarios.traffic import core_drops, loop_drops
from wiretun.bench.iperf import run_iperf
from wiretun.bench.plan import WORKLOADS
from wiretun.lab.netns import Topology
from wiretun.lab.peers import (
    WireguardGoPeer,
    WiretunPeer,
    have_wireguard_go,
    udp_ping,
)
from wiretun.tunnel.config import parse_key

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not have_wireguard_go(), reason="needs wireguard-go and wg"),
]

PORT = 51820
SPRAY_RATE = 4000  # datagrams/s: far above any real peer's control traffic
IPERF_SECONDS = 5
# Where garbage can end up (a mutated copy of a seen transport message is a replay first).
GARBAGE_REASONS = (
    "bad_type", "bad_size", "mac1", "unknown_index", "decrypt",
    "unknown_peer", "cookie_sent", "rate_limited", "replay",
)  # fmt: skip


def test_tunnel_carries_traffic_through_garbage(topology: Topology) -> None:
    a, b, f = topology.netns(), topology.netns(), topology.netns()
    _, veth_b = topology.veth(a, b, "192.168.241.1/24", "192.168.241.2/24")
    topology.veth(f, b, "192.168.243.1/24", "192.168.243.2/24")
    with WireguardGoPeer(a).start() as wg, WiretunPeer(b) as wt:
        wireguard_go_initiates_to(wg, wt, f"192.168.241.2:{PORT}", wt_port=PORT)

        # Real transport messages off the wire: their receiver index is live on wiretun.
        with b.enter():
            sniffer = packet_socket(veth_b)
        try:
            assert udp_ping(a, b, "10.9.0.1", count=5) == 5
            seen = read_udp_payloads(sniffer, PORT, 20, timeout=2)
        finally:
            sniffer.close()
        transports = [d for d in seen if d[0] == 4 and len(d) > 32]
        assert transports, "no transport message captured"

        tcp = WORKLOADS["tcp"]
        quiet = run_iperf(b, a, "10.9.0.1", port=5201, workload=tcp, duration=2, udp_rate_mbps=0)

        wt_public = parse_key(wt.keys.public)
        maker = GarbageMaker(
            random.Random(8),
            wt_public,
            [stranger_initiation(wt_public) for _ in range(16)],
            transports,
        )
        with f.enter():
            socks = udp_sockets(16, "192.168.243.1")
        sprayer = Sprayer(socks, ("192.168.243.2", PORT), maker, SPRAY_RATE)
        try:
            sprayer.start()
            loud = run_iperf(
                b, a, "10.9.0.1", port=5201, workload=tcp, duration=IPERF_SECONDS, udp_rate_mbps=0
            )
        finally:
            sprayer.stop()
            for s in socks:
                s.close()
        sent = sprayer.stats.sent
        print(f"garbage sent {sprayer.stats.total} by kind {dict(sent)}")
        print(f"replies {dict(sprayer.stats.replies)}")
        print(f"tcp quiet {quiet.gbps * 1000:.0f} Mbit/s, under garbage {loud.gbps * 1000:.0f}")

        assert sprayer.stats.total >= SPRAY_RATE * IPERF_SECONDS // 2
        assert set(sent) >= {"random", "initiation_stranger", "transport_mutated"}
        assert loud.bytes > 1_000_000  # the tunnel kept carrying a TCP stream
        assert wt.proc is not None and wt.proc.poll() is None
        assert udp_ping(a, b, "10.9.0.1") == 3
        # Garbage never moved the peer's endpoint away from wireguard-go.
        (peer,) = wt.dump()[1]
        assert peer.endpoint == "192.168.241.1:51821"

        stats = wt.stats()  # the live tunnel's counters, as `wiretun show --json` reads them
        drops = core_drops(stats)
        print(f"core drops {drops}")
        for reason in ("bad_type", "bad_size", "mac1", "unknown_index", "decrypt"):
            assert drops.get(reason, 0) > 0, (reason, drops)
        # Strangers' initiations: refused as unknown, or answered with a cookie under load.
        assert drops.get("unknown_peer", 0) + drops.get("cookie_sent", 0) > 0
        # Each datagram is dropped at most once, and the socket buffer may shed some.
        counted = sum(drops.get(r, 0) for r in GARBAGE_REASONS)
        assert counted <= sprayer.stats.total
        assert counted >= sprayer.stats.total * 0.5, (counted, sprayer.stats.total)
        # No core call raised (the loop counts those as *_error drops).
        assert loop_drops(stats) == {}
        assert wt.stop() == 0
        assert "Traceback" not in wt.log_text()
