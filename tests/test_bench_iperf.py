"""Tests for wiretun.bench.iperf: parsing stored iperf3 3.12 JSON from real runs here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wiretun.bench.iperf import IperfError, client_args, parse_result
from wiretun.bench.plan import WORKLOADS

DATA = Path(__file__).parent / "data" / "iperf3"


def sample(name: str) -> str:
    return (DATA / f"{name}.json").read_text()


def test_tcp_forward_reads_received_rate_and_sender_retransmits() -> None:
    res = parse_result(sample("veth-tcp"))
    assert res.gbps == pytest.approx(17098467615.687147 / 1e9)
    assert res.bytes == 4280680448
    assert res.retransmits == 3765
    assert res.udp is None


def test_tcp_reverse_takes_retransmits_from_the_server_side_sender() -> None:
    res = parse_result(sample("veth-tcp-rev"))
    assert res.retransmits == 45
    assert res.gbps == pytest.approx(16.187017908506079)
    assert res.bytes == 4046979072


def test_parallel_streams_use_the_sum() -> None:
    data = json.loads(sample("wireguard-go-tcp-p4"))
    res = parse_result(sample("wireguard-go-tcp-p4"))
    per_stream = sum(s["receiver"]["bytes"] for s in data["end"]["streams"])
    assert len(data["end"]["streams"]) == 4
    assert res.bytes == per_stream
    assert res.retransmits == data["end"]["sum_sent"]["retransmits"]


def test_udp_loss_jitter_and_out_of_order() -> None:
    res = parse_result(sample("wireguard-go-udp"))
    assert res.udp is not None
    assert res.retransmits is None
    assert res.udp.lost_percent == pytest.approx(24.177497852848553)
    assert 0 < res.udp.lost_packets < res.udp.packets
    assert res.udp.out_of_order == 0
    assert res.udp.jitter_ms > 0
    veth = parse_result(sample("veth-udp"))
    assert veth.udp is not None
    assert veth.udp.lost_packets == 19
    assert veth.udp.packets == 86299


def test_reported_error_raises_with_iperf_message() -> None:
    with pytest.raises(IperfError, match="Connection refused"):
        parse_result(sample("error-refused"))


@pytest.mark.parametrize(
    "text",
    ["", "not json", "[]", '{"end": {}}', '{"start": {}, "end": {"sum_sent": {}}}'],
)
def test_garbage_raises_iperf_error(text: str) -> None:
    with pytest.raises(IperfError):
        parse_result(text)


def test_truncated_sample_raises_iperf_error() -> None:
    data = json.loads(sample("veth-tcp"))
    del data["end"]["sum_received"]["bits_per_second"]
    with pytest.raises(IperfError, match="bits_per_second"):
        parse_result(json.dumps(data))


def test_client_args_per_workload() -> None:
    base = ["iperf3", "-c", "10.0.0.2", "-p", "5201", "-t", "3", "-J"]
    tcp = client_args("10.0.0.2", 5201, WORKLOADS["tcp"], 3.0, 500)
    assert tcp[: len(base)] == base
    assert "-R" not in tcp
    assert "-u" not in tcp
    assert "-R" in client_args("10.0.0.2", 5201, WORKLOADS["tcp-rev"], 3.0, 500)
    p4 = client_args("10.0.0.2", 5201, WORKLOADS["tcp-p4"], 3.0, 500)
    assert p4[p4.index("-P") + 1] == "4"
    udp = client_args("10.0.0.2", 5201, WORKLOADS["udp"], 2.5, 300)
    assert udp[udp.index("-b") + 1] == "300M"
    assert udp[udp.index("-t") + 1] == "2.5"
