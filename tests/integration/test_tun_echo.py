"""A real multi-queue TUN inside a namespace: UDP flows echoed back through it, in order."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from wiretun.lab.netns import NetNS, Topology, unique_name
from wiretun.tun import InlineTun, Tun

FLOWS = 8
PER_FLOW = 200
WARMUP = 0xFFFFFFFF


def reflect(packet: bytes) -> bytes:
    """Swap source and destination address and port: the checksums stay valid."""
    p = bytearray(packet)
    if p[0] >> 4 == 4:
        ihl = (p[0] & 0x0F) * 4
        p[12:16], p[16:20] = packet[16:20], packet[12:16]
    else:
        ihl = 40
        p[8:24], p[24:40] = packet[24:40], packet[8:24]
    p[ihl : ihl + 2], p[ihl + 2 : ihl + 4] = packet[ihl + 2 : ihl + 4], packet[ihl : ihl + 2]
    return bytes(p)


def setup_tun_addresses(ns: NetNS, name: str) -> None:
    ns.run("ip", "addr", "add", "10.91.0.1/24", "dev", name)
    ns.run("ip", "addr", "add", "fd91::1/64", "dev", name, "nodad")
    ns.run("ip", "link", "set", name, "txqueuelen", "10000", "up")


async def echo(tun: Tun | InlineTun) -> None:
    while True:
        for packet in await tun.recv_many():
            if tun.send_many([reflect(packet)]) == 0:
                await tun.send_ready()
                tun.send(reflect(packet))


async def run_flows(tun: Tun | InlineTun) -> None:
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    for i in range(FLOWS):
        if i % 2:
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.bind(("fd91::1", 0))
            s.connect(("fd91::2", 7000 + i))
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("10.91.0.1", 0))
            s.connect(("10.91.0.2", 7000 + i))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.setblocking(False)
        socks.append(s)
    echo_task = asyncio.ensure_future(echo(tun))
    try:
        # One round trip per flow first, as a TCP handshake does: the kernel's automq steers
        # a flow to the queue that last wrote it, so the first reply may move the flow to
        # another queue; packets queued on the old one before that could be overtaken.
        for i, s in enumerate(socks):
            s.send(struct.pack("!II", i, WARMUP))
            data = await asyncio.wait_for(loop.sock_recv(s, 2048), 5)
            assert struct.unpack_from("!II", data) == (i, WARMUP)
        for seq in range(PER_FLOW):
            for i, s in enumerate(socks):
                s.send(struct.pack("!II", i, seq) + bytes(40))
            if seq % 50 == 49:
                await asyncio.sleep(0)
        for i, s in enumerate(socks):
            got = []
            for _ in range(PER_FLOW):
                data = await asyncio.wait_for(loop.sock_recv(s, 2048), 5)
                got.append(struct.unpack_from("!II", data))
            assert got == [(i, seq) for seq in range(PER_FLOW)], f"flow {i} out of order"
    finally:
        echo_task.cancel()
        for s in socks:
            s.close()


@pytest.mark.root
@pytest.mark.parametrize("inline", [False, True], ids=["threads", "inline"])
@pytest.mark.parametrize(("queues", "offload"), [(1, False), (2, False), (4, False), (2, True)])
def test_echo_udp_flows_in_order(
    topology: Topology, queues: int, offload: bool, inline: bool
) -> None:
    ns = topology.netns()
    name = unique_name("wtt")
    if offload:
        pytest.importorskip("wiretun.tun.offload", reason="the offload codec is not there yet")
    with ns.enter():
        opened: Tun | InlineTun = (
            InlineTun.open(name, queues=queues, mtu=1400, offload=offload)
            if inline
            else Tun.open(name, queues=queues, mtu=1400, offload=offload)
        )
        with opened as tun:
            setup_tun_addresses(ns, name)
            link = ns.run("ip", "-d", "link", "show", name)
            if queues == 1:  # single-queue: no multi_queue, so no foreign attach is possible
                assert "multi_queue" not in link
            else:
                assert f"multi_queue numqueues {queues}" in link
            asyncio.run(run_flows(tun))
            stats = tun.stats()
        assert tun.closed
    total = stats.total
    assert total.rx_packets >= FLOWS * (PER_FLOW + 1)
    assert total.tx_packets >= FLOWS * (PER_FLOW + 1)
    assert not total.tx_drops
    assert stats.foreign_queues == 0
    if queues > 1:
        # The kernel spread the flows: more than one queue carried traffic each way.
        assert sum(1 for q in stats.queues if q.rx_packets) > 1
        assert sum(1 for q in stats.queues if q.tx_packets) > 1
    assert ns.run("ip", "link", "show", name, check=False) == ""
