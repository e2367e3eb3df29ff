"""Real TCP through two offload TUNs in two namespaces, joined by a Python forwarder.

The sending kernel hands its TUN 64 KB TSO super-packets (split by the codec), the forwarder
passes the segments across, and the other TUN's writer coalesces them back into GSO frames.
One variant makes the kernel really refuse GSO writes (EINVAL) to exercise the fallback.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
from collections.abc import Sequence

import pytest

from wiretun.lab.netns import Topology, unique_name
from wiretun.tun import Tun, offload
from wiretun.tun.codec import OffloadFeatures
from wiretun.tun.offload import GSO_NONE, OffloadCodec

UP = 8 << 20  # bytes A -> B
DOWN = 2 << 20  # bytes B -> A, so both kernels send super-packets
PORT = 5201


class RefusedGsoCodec(OffloadCodec):
    """Makes each GSO frame claim hdr_len 0xFFFF: the kernel answers such writes with EINVAL
    (tun: hdr_len > len), which is a real refusal to fall back from."""

    def encode(self, packets: Sequence[bytes]) -> list[bytes]:
        return [
            f if f[1] == GSO_NONE else f[:2] + struct.pack("=H", 0xFFFF) + f[4:]
            for f in super().encode(packets)
        ]


async def forward(src: Tun, dst: Tun) -> None:
    while True:
        packets = await src.recv_many()
        while packets:
            n = dst.send_many(packets)
            packets = packets[n:]
            if packets:
                await dst.send_ready()


def serve(listener: socket.socket, reply: bytes) -> str:
    """Receive everything, then answer with `reply`; the digest of what arrived."""
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(60)
        digest = hashlib.sha256()
        while chunk := conn.recv(1 << 20):
            digest.update(chunk)
        conn.sendall(reply)
    return digest.hexdigest()


def send(client: socket.socket, addr: tuple[str, int], data: bytes) -> str:
    """Send `data`, half-close, and return the digest of the answer."""
    with client:
        client.settimeout(60)
        client.connect(addr)
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        digest = hashlib.sha256()
        while chunk := client.recv(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def transfer(
    tun_a: Tun, tun_b: Tun, client: socket.socket, listener: socket.socket, addr: str
) -> tuple[str, str]:
    up, down = os.urandom(UP), os.urandom(DOWN)
    pumps = [
        asyncio.ensure_future(forward(tun_a, tun_b)),
        asyncio.ensure_future(forward(tun_b, tun_a)),
    ]
    try:
        got_up, got_down = await asyncio.wait_for(
            asyncio.gather(
                asyncio.to_thread(serve, listener, down),
                asyncio.to_thread(send, client, (addr, PORT), up),
            ),
            90,
        )
    finally:
        for p in pumps:
            p.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
    assert got_up == hashlib.sha256(up).hexdigest(), "A -> B data damaged"
    assert got_down == hashlib.sha256(down).hexdigest(), "B -> A data damaged"
    return got_up, got_down


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "refuse_gso"),
    [("ipv4", False), ("ipv6", False), ("ipv4", True)],
    ids=["tcp4", "tcp6", "tcp4-kernel-refuses-gso"],
)
def test_tcp_through_offload_tuns(
    topology: Topology, monkeypatch: pytest.MonkeyPatch, family: str, refuse_gso: bool
) -> None:
    codecs: list[OffloadCodec] = []
    opened: list[str] = []

    def make_codec(features: OffloadFeatures) -> OffloadCodec:
        # The second TUN opened (B) gets the refusing codec in the fallback variant.
        cls = RefusedGsoCodec if refuse_gso and opened else OffloadCodec
        codec = cls(udp=features.uso)
        codecs.append(codec)
        return codec

    monkeypatch.setattr(offload, "make_codec", make_codec)
    ns_a, ns_b = topology.netns(), topology.netns()
    v6 = family == "ipv6"
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    addr_a, addr_b = ("fd99::1/64", "fd99::2/64") if v6 else ("10.99.0.1/24", "10.99.0.2/24")
    tuns: list[Tun] = []
    try:
        for ns, addr in ((ns_a, addr_a), (ns_b, addr_b)):
            name = unique_name("wto")
            with ns.enter():
                tuns.append(Tun.open(name, offload=True))
            opened.append(name)
            ns.run("ip", "addr", "add", addr, "dev", name, *(["nodad"] if v6 else []))
            ns.run("ip", "link", "set", name, "up")
            assert "vnet_hdr on" in ns.run("ip", "-d", "link", "show", name)
        with ns_b.enter():
            listener = socket.socket(fam, socket.SOCK_STREAM)
        with listener:
            listener.bind((addr_b.split("/")[0], PORT))
            listener.listen(1)
            listener.settimeout(60)
            with ns_a.enter():
                client = socket.socket(fam, socket.SOCK_STREAM)
            asyncio.run(transfer(tuns[0], tuns[1], client, listener, addr_b.split("/")[0]))
        stats = [t.stats().total for t in tuns]
    finally:
        for t in tuns:
            t.close()

    codec_a, codec_b = codecs
    # The kernels really handed over TSO super-packets, both ways, and we split them.
    assert codec_a.stats.gso_frames_in > 0
    assert codec_b.stats.gso_frames_in > 0
    assert stats[0].rx_packets > stats[0].rx_frames
    for c in codecs:
        assert not c.stats.dropped, c.stats.dropped
    assert not stats[0].tx_drops and not stats[1].tx_drops
    if refuse_gso:
        # GSO writes were refused for real: those of the first coalesced batch, no more;
        # everything after went out plainly.
        assert codec_b.stats.gso_write_rejected >= 1
        assert codec_b.stats.gso_write_rejected == codec_b.stats.gso_frames_out
        assert codec_b.stats.fallback_packets > 1
        assert not codec_b.gso_writes
        assert codec_a.gso_writes and codec_a.stats.gso_frames_out > 0
    else:
        # Both writers coalesced segments back into GSO frames the kernels accepted.
        assert codec_a.stats.gso_frames_out > 0 and codec_b.stats.gso_frames_out > 0
        assert codec_b.stats.gso_write_rejected == 0
        assert stats[1].tx_packets > stats[1].tx_frames
