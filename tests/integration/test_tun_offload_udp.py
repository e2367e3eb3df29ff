"""UDP GSO (USO) through two offload TUNs in two namespaces, joined by a Python forwarder."""

from __future__ import annotations

import asyncio
import socket

import pytest

from wiretun.lab.netns import Topology, unique_name
from wiretun.tun import Tun, offload
from wiretun.tun.codec import OffloadFeatures
from wiretun.tun.offload import OffloadCodec

UDP_SEGMENT = 103  # not in Python's socket module
SEG = 1200
PER_SEND = 40  # datagrams per UDP_SEGMENT send (the kernel allows 64)
SENDS = 25
PORT = 7001


async def forward(src: Tun, dst: Tun) -> None:
    while True:
        packets = await src.recv_many()
        while packets:
            n = dst.send_many(packets)
            packets = packets[n:]
            if packets:
                await dst.send_ready()


def receive(sock: socket.socket, count: int) -> list[bytes]:
    sock.settimeout(10)
    return [sock.recv(65535) for _ in range(count)]


async def run(tun_a: Tun, tun_b: Tun, tx: socket.socket, rx: socket.socket) -> list[bytes]:
    pumps = [
        asyncio.ensure_future(forward(tun_a, tun_b)),
        asyncio.ensure_future(forward(tun_b, tun_a)),
    ]
    try:
        got = asyncio.ensure_future(asyncio.to_thread(receive, rx, SENDS * PER_SEND))
        for i in range(SENDS):
            # One send of PER_SEND datagrams: a GSO_UDP_L4 super-packet where USO is on.
            tx.send(b"".join(bytes([i, k]) * (SEG // 2) for k in range(PER_SEND)))
            await asyncio.sleep(0.002)  # stay well under the receive buffer
        return await asyncio.wait_for(got, 30)
    finally:
        for p in pumps:
            p.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


@pytest.mark.root
def test_udp_gso_through_offload_tuns(topology: Topology, monkeypatch: pytest.MonkeyPatch) -> None:
    codecs: list[OffloadCodec] = []

    def make_codec(features: OffloadFeatures) -> OffloadCodec:
        codecs.append(OffloadCodec(udp=features.uso))
        return codecs[-1]

    monkeypatch.setattr(offload, "make_codec", make_codec)
    ns_a, ns_b = topology.netns(), topology.netns()
    tuns: list[Tun] = []
    try:
        for ns, addr in ((ns_a, "10.98.0.1/24"), (ns_b, "10.98.0.2/24")):
            name = unique_name("wtu")
            with ns.enter():
                tuns.append(Tun.open(name, offload=True))
            ns.run("ip", "addr", "add", addr, "dev", name)
            ns.run("ip", "link", "set", name, "up")
        with ns_b.enter():
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with ns_a.enter():
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with rx, tx:
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            rx.bind(("10.98.0.2", PORT))
            tx.setsockopt(socket.SOL_UDP, UDP_SEGMENT, SEG)
            tx.connect(("10.98.0.2", PORT))
            got = asyncio.run(run(tuns[0], tuns[1], tx, rx))
    finally:
        for t in tuns:
            t.close()

    want = [bytes([i, k]) * (SEG // 2) for i in range(SENDS) for k in range(PER_SEND)]
    assert got == want  # every datagram, intact and in order
    codec_a, codec_b = codecs
    assert not codec_a.stats.dropped and not codec_b.stats.dropped
    if codec_a.udp:  # USO accepted (Linux >= 6.2): super-packets both ways
        # Every send arrived as one UDP super-packet; the writer rebuilt super-packets (how
        # many depends on how the forwarder's batches fell).
        assert codec_a.stats.gso_frames_in == SENDS
        b = codec_b.stats
        assert b.gso_frames_out > 0 and b.gso_write_rejected == 0
        assert b.frames_out + b.coalesced == b.packets_in
