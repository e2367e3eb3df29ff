"""InlineTun over a SOCK_SEQPACKET socketpair standing in for the queue fd (no root needed)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Iterator

import pytest

from wiretun.tun import QueueFull, TunBroken, TunClosed
from wiretun.tun.gso import GSO_NONE, VNET_HDR, VNET_HDR_LEN
from wiretun.tun.inline import InlineTun
from wiretun.tun.offload import OffloadCodec


def udp4(sport: int, seq: int, size: int = 40) -> bytes:
    """An IPv4/UDP packet whose IP total length is right (checksums are not needed here)."""
    payload = struct.pack("!I", seq) + bytes(size)
    udp = struct.pack("!HHHH", sport, 9, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))  # fmt: skip
    return ip + udp


class Fake:
    """An InlineTun over a socketpair; `peer` is the kernel side."""

    def __init__(self, sndbuf: int | None = None, **kwargs: object) -> None:
        ours, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.peer.settimeout(5)
        if sndbuf is not None:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        ours.setblocking(False)
        self.tun = InlineTun("fake", ours.detach(), **kwargs)  # type: ignore[arg-type]

    def close(self) -> None:
        self.tun.close()
        self.peer.close()


@pytest.fixture
def fake() -> Iterator[Fake]:
    f = Fake()
    yield f
    f.close()


def test_recv_many_waits_then_returns_in_order_in_batches(fake: Fake) -> None:
    packets = [udp4(1000, i) for i in range(250)]

    async def main() -> list[list[bytes]]:
        task = asyncio.ensure_future(fake.tun.recv_many(100))
        await asyncio.sleep(0.05)
        assert not task.done()
        sender = asyncio.ensure_future(
            asyncio.to_thread(lambda: [fake.peer.send(p) for p in packets])
        )
        batches = [await task]
        while sum(map(len, batches)) < len(packets):
            batches.append(await asyncio.wait_for(fake.tun.recv_many(100), 5))
        await sender
        return batches

    batches = asyncio.run(main())
    assert [p for b in batches for p in b] == packets
    assert all(len(b) <= 100 for b in batches)
    q = fake.tun.stats().queues[0]
    assert q.rx_packets == 250
    assert q.rx_bytes == sum(len(p) for p in packets)


def test_send_many_writes_directly_and_drops_malformed(fake: Fake) -> None:
    good = [udp4(7, i) for i in range(5)]
    bad = udp4(7, 99)[:-3]  # IP length says more than there is

    async def main() -> int:
        await fake.tun.send_ready()
        return fake.tun.send_many([*good[:2], bad, *good[2:]])

    assert asyncio.run(main()) == 6
    assert [fake.peer.recv(65535) for _ in good] == good
    q = fake.tun.stats().queues[0]
    assert q.tx_packets == 5
    assert q.tx_drops == {"malformed": 1}


def test_full_kernel_queue_holds_frames_until_writable_and_refuses_beyond_capacity() -> None:
    f = Fake(sndbuf=4096, outbound_capacity=50)
    try:
        packets = [udp4(9, i, size=1000) for i in range(200)]

        async def main() -> tuple[int, int]:
            taken = f.tun.send_many(packets)
            # The socket filled up: the rest waits (at most 50 packets), the loop keeps going.
            refused = len(packets) - taken
            with pytest.raises(QueueFull):
                for _ in range(60):
                    f.tun.send(packets[0])
            got = 0
            while got < taken:
                got += len(await asyncio.to_thread(_drain, f.peer))
            await asyncio.wait_for(f.tun.send_ready(), 5)
            return taken, refused

        taken, refused = asyncio.run(main())
        assert 0 < taken < len(packets) and refused > 0
        q = f.tun.stats().queues[0]
        assert q.refused >= refused + 1
    finally:
        f.close()


def _drain(s: socket.socket) -> list[bytes]:
    out = [s.recv(65535)]
    s.setblocking(False)
    try:
        while True:
            out.append(s.recv(65535))
    except BlockingIOError:
        pass
    finally:
        s.setblocking(True)
        s.settimeout(5)
    return out


def test_offload_codec_decodes_frames_and_keeps_leftovers() -> None:
    f = Fake(codec=OffloadCodec())
    try:
        packets = [udp4(5, i) for i in range(6)]
        for p in packets:
            f.peer.send(VNET_HDR.pack(0, GSO_NONE, 0, 0, 0, 0) + p)

        async def main() -> list[bytes]:
            first = await f.tun.recv_many(4)
            assert len(first) == 4
            return first + await f.tun.recv_many(4)

        assert asyncio.run(main()) == packets
        asyncio.run(_send(f.tun, packets[:1]))
        frame = f.peer.recv(65535)
        assert frame[VNET_HDR_LEN:] == packets[0]
    finally:
        f.close()


async def _send(tun: InlineTun, packets: list[bytes]) -> int:
    return tun.send_many(packets)


def test_read_error_is_tun_broken_and_close_wakes_waiters() -> None:
    f = Fake()
    f.peer.close()  # EOF on our side

    async def eof() -> None:
        with pytest.raises(TunBroken):
            await f.tun.recv_many()

    asyncio.run(eof())
    f.tun.close()
    g = Fake()
    try:

        async def closed() -> None:
            task = asyncio.ensure_future(g.tun.recv_many())
            await asyncio.sleep(0.02)
            g.tun.close()
            with pytest.raises(TunClosed):
                await asyncio.wait_for(task, 5)

        asyncio.run(closed())
        with pytest.raises(TunClosed):
            g.tun.send_many([udp4(1, 1)])
    finally:
        g.close()


def test_close_is_idempotent_and_closes_the_fd() -> None:
    f = Fake()
    fd = f.tun._fd
    f.tun.close()
    f.tun.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    f.peer.close()
