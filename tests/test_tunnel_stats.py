"""wiretun.tunnel.stats: the TunnelStats snapshot, its drop summary and its JSON form."""

from __future__ import annotations

import dataclasses
import json
from types import MappingProxyType

import pytest

from wiretun.tun.gso import OffloadStats
from wiretun.tun.stats import QueueStats, TunStats
from wiretun.tunnel.loop import LoopStats
from wiretun.tunnel.stats import (
    OffloadCounters,
    PeerCounters,
    TunnelStats,
    core_drops,
    format_endpoint,
    json_line_pieces,
)
from wiretun.tunnel.udp import UdpStats
from wiretun.wireguard.stats import DROP_REASONS, DropReason

PEER = PeerCounters(
    public_key="BDU8H/VB+PjZSlFV55N3qyOHYXtlNMTngERTvM8aaxA=",
    endpoint="192.0.2.2:51820",
    allowed_ips=("10.9.0.2/32",),
    rx_bytes=1000,
    tx_bytes=2000,
    last_handshake=1_700_000_000.0,
    handshake_age=3.5,
    persistent_keepalive=25,
    has_session=True,
    staged_packets=0,
)


def sample(**drops: int) -> TunnelStats:
    offload = OffloadStats()
    offload.dropped["bad_gso"] += 2
    return TunnelStats(
        name="wt0", public_key="x", listen_port=51820, fwmark=0, mtu=1420, data_path="native",
        taken_at=1_700_000_003.5, uptime=10.0, peers=(PEER,), core_drops=core_drops(drops),
        packets_sealed=5, packets_opened=6, handshakes_completed=1,
        frame_drops={"too_many_segments": 1},
        loop=LoopStats(1, 2, 3, 4, 5, 6, 7, 0, 0, 0, drops={}, events={"HandshakeCompleted": 1}),
        udp=UdpStats(51820, 1, 2, 3, 4, 5, 0, 0, 0, drops={"send_ENETUNREACH": 4}),
        tun=TunStats("wt0", (QueueStats(0, rx_packets=9, tx_drops=MappingProxyType({"x": 1})),)),
        offload=OffloadCounters.total([offload, offload]),
    )  # fmt: skip


def test_core_drops_list_every_reason_zeros_included() -> None:
    drops = core_drops({"mac1": 3})
    assert list(drops) == list(DropReason)
    assert drops[DropReason.MAC1] == 3 and drops[DropReason.REPLAY] == 0
    assert tuple(drops) == tuple(DropReason(r) for r in DROP_REASONS)


def test_drops_gather_every_layer_non_zero_only() -> None:
    assert sample(mac1=3).drops == {
        "core.mac1": 3,
        "frames.too_many_segments": 1,
        "udp.send_ENETUNREACH": 4,
        "tun_tx.x": 1,
    }  # offload.drops are the TUN's rx_drops already (wiretun.tun.base), not counted twice


def test_the_snapshot_is_frozen() -> None:
    s = sample()
    with pytest.raises(AttributeError):
        s.mtu = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.core_drops[DropReason.MAC1] = 1  # type: ignore[index]


def test_json_is_plain_and_round_trips() -> None:
    out = sample(replay=2).to_json()
    again = json.loads(json.dumps(out))
    assert again == out
    assert again["core_drops"]["replay"] == 2 and len(again["core_drops"]) == len(DROP_REASONS)
    assert again["peers"][0]["public_key"] == PEER.public_key
    assert again["tun"]["queues"][0]["rx_packets"] == 9
    assert again["offload"]["drops"] == {"bad_gso": 4}
    assert again["drops"]["core.replay"] == 2
    assert again["frame_drops"] == {"too_many_segments": 1}


@pytest.mark.parametrize("count", [0, 1, 3])
def test_json_in_pieces_is_the_same_object_on_one_line(count: int) -> None:
    peers = tuple(dataclasses.replace(PEER, rx_bytes=i, endpoint=None) for i in range(count))
    whole = dataclasses.replace(sample(mac1=1), peers=peers)
    pieces = list(json_line_pieces(dataclasses.replace(whole, peers=()), iter(peers)))
    assert len(pieces) == count + 2  # one per peer: the caller can pause between them
    line = "".join(pieces)
    assert "\n" not in line
    assert json.loads(line) == whole.to_json()


def test_offload_counters_sum_the_queues() -> None:
    a, b = OffloadStats(frames_in=2, coalesced=1), OffloadStats(frames_in=3)
    b.dropped["short"] = 1
    total = OffloadCounters.total([a, b])
    assert (total.frames_in, total.coalesced, dict(total.drops)) == (5, 1, {"short": 1})
    assert OffloadCounters.total([]) == OffloadCounters()


def test_format_endpoint() -> None:
    assert format_endpoint(("192.0.2.1", 1)) == "192.0.2.1:1"
    assert format_endpoint(("2001:db8::1", 1)) == "[2001:db8::1]:1"
