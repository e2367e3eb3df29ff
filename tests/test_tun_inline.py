"""InlineTun over SOCK_SEQPACKET socketpairs standing in for the queue fds (no root needed)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Iterator

import pytest

from wiretun.packet import flow_hash
from wiretun.tun import InvalidPacket, QueueFull, TunBroken, TunClosed
from wiretun.tun.gso import GSO_NONE, VNET_HDR, VNET_HDR_LEN
from wiretun.tun.inline import InlineTun
from wiretun.tun.offload import OffloadCodec
from wiretun.tun.tun import split_by_flow


def udp4(sport: int, seq: int, size: int = 40) -> bytes:
    """An IPv4/UDP packet whose IP total length is right (checksums are not needed here)."""
    payload = struct.pack("!I", seq) + bytes(size)
    udp = struct.pack("!HHHH", sport, 9, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))  # fmt: skip
    return ip + udp


class Fake:
    """An InlineTun over `queues` socketpairs; `peers` are the kernel side (`peer` the first)."""

    def __init__(self, sndbuf: int | None = None, queues: int = 1, **kwargs: object) -> None:
        fds: list[int] = []
        self.peers: list[socket.socket] = []
        for _ in range(queues):
            ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            peer.settimeout(5)
            if sndbuf is not None:
                ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            ours.setblocking(False)
            fds.append(ours.detach())
            self.peers.append(peer)
        self.peer = self.peers[0]
        self.tun = InlineTun("fake", fds, **kwargs)  # type: ignore[arg-type]

    def close(self) -> None:
        self.tun.close()
        for peer in self.peers:
            peer.close()


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


def test_send_many_writes_directly_and_refuses_a_malformed_batch_whole(fake: Fake) -> None:
    good = [udp4(7, i) for i in range(5)]
    bad = udp4(7, 99)[:-3]  # IP length says more than there is

    async def main() -> int:
        await fake.tun.send_ready()
        with pytest.raises(InvalidPacket, match="says its length is"):
            fake.tun.send_many([*good[:2], bad, *good[2:]])
        return fake.tun.send_many(good)

    assert asyncio.run(main()) == 5
    # Nothing of the refused batch went out: the peer sees exactly the good batch.
    assert [fake.peer.recv(65535) for _ in good] == good
    q = fake.tun.stats().queues[0]
    assert q.tx_packets == 5
    assert q.tx_drops == {}


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
    f = Fake(codecs=[OffloadCodec()])
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


def test_frames_the_codec_drops_show_in_stats() -> None:
    """Regression (#15): frames the offload decoder dropped were counted only inside the
    codec, so TunStats showed no drop at all. They now appear among rx_drops by reason."""
    f = Fake(codecs=[OffloadCodec(), OffloadCodec()], queues=2)
    try:
        good = udp4(5, 1)
        f.peer.send(VNET_HDR.pack(0, GSO_NONE, 0, 0, 0, 0) + good)
        f.peer.send(b"\x01" * 5)  # short_frame
        f.peers[1].send(VNET_HDR.pack(0, 1, 0, 0, 20, 16) + good)  # TCPv4 GSO, gso_size 0

        async def main() -> list[bytes]:
            got: list[bytes] = []
            for _ in range(20):
                got += await asyncio.wait_for(f.tun.recv_many(8), 2)
                stats = f.tun.stats()
                if stats.total.rx_frames >= 3:
                    break
            return got

        assert asyncio.run(main()) == [good]
        stats = f.tun.stats()
        assert dict(stats.queues[0].rx_drops) == {"short_frame": 1}
        assert dict(stats.queues[1].rx_drops) == {"bad_gso": 1}
        assert dict(stats.total.rx_drops) == {"short_frame": 1, "bad_gso": 1}
        assert stats.total.dropped == 2
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
    fd = f.tun._qs[0].fd
    f.tun.close()
    f.tun.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    f.peer.close()


# --- several queue fds ---


def test_recv_many_reads_every_fd_each_in_arrival_order() -> None:
    f = Fake(queues=3)
    try:
        sent = {i: [udp4(2000 + i, seq) for seq in range(120)] for i in range(3)}

        def send_all() -> None:
            for seq in range(120):
                for i, peer in enumerate(f.peers):
                    peer.send(sent[i][seq])

        async def main() -> list[list[bytes]]:
            task = asyncio.ensure_future(f.tun.recv_many(50))
            await asyncio.sleep(0.05)
            assert not task.done()  # waits on all three fds
            sender = asyncio.ensure_future(asyncio.to_thread(send_all))
            batches = [await asyncio.wait_for(task, 5)]
            while sum(map(len, batches)) < 360:
                batches.append(await asyncio.wait_for(f.tun.recv_many(50), 5))
            await sender
            return batches

        batches = asyncio.run(main())
        assert all(0 < len(b) <= 50 for b in batches)
        got = [p for b in batches for p in b]
        assert sorted(got) == sorted(p for ps in sent.values() for p in ps)
        for i in range(3):  # each fd's packets in the order it delivered them
            assert [p for p in got if p in sent[i]] == sent[i]
        stats = f.tun.stats()
        assert [q.rx_packets for q in stats.queues] == [120, 120, 120]
        assert stats.total.rx_packets == 360
    finally:
        f.close()


def test_send_many_writes_each_flow_to_its_flow_hash_fd_in_order() -> None:
    f = Fake(queues=4)
    try:
        flows = 16
        packets = [udp4(3000 + fl, seq) for seq in range(30) for fl in range(flows)]
        # The threaded Tun's selection (shared code): a flow's packets go to one writer.
        expected = split_by_flow(packets, 4)
        assert all(flow_hash(p) % 4 == i for i, group in enumerate(expected) for p in group)

        async def main() -> int:
            taken = f.tun.send_many(packets[:100])
            for p in packets[100:]:
                f.tun.send(p)
            return taken

        assert asyncio.run(main()) == 100
        got = [_drain(peer) if group else [] for peer, group in zip(f.peers, expected, strict=True)]
        assert got == expected
        assert sum(1 for g in got if g) > 1  # 16 flows did spread over the fds
        stats = f.tun.stats()
        assert [q.tx_packets for q in stats.queues] == [len(g) for g in expected]
        assert stats.queues[0].index == 0 and stats.queues[3].index == 3
    finally:
        f.close()


def test_one_full_fd_holds_its_frames_while_the_others_keep_writing() -> None:
    f = Fake(queues=2, sndbuf=4096, outbound_capacity=30)
    try:
        # Two flows, one per fd.
        a = [udp4(4000, seq, size=1000) for seq in range(60)]
        sport = next(
            s for s in range(4001, 5000) if flow_hash(udp4(s, 0)) % 2 != flow_hash(a[0]) % 2
        )
        b = [udp4(sport, seq, size=1000) for seq in range(3)]  # fits its sndbuf
        qa = flow_hash(a[0]) % 2

        async def main() -> None:
            # Fill fd qa: once its kernel queue is full, frames wait until the budget is spent.
            taken = 0
            while n := f.tun.send_many(a[:10]):
                taken += n
            # The budget is shared: no room is left for the other fd's flow either.
            assert f.tun.send_many(b) == 0
            got = 0
            while got < taken:
                got += len(await asyncio.to_thread(_drain, f.peers[qa]))
            await asyncio.wait_for(f.tun.send_ready(), 5)
            assert f.tun.send_many(b) == len(b)
            assert _drain(f.peers[1 - qa]) == b

        asyncio.run(main())
        stats = f.tun.stats()
        assert stats.queues[1 - qa].refused == len(b)
        assert stats.queues[qa].refused > 0
        assert stats.queues[1 - qa].tx_packets == len(b)
    finally:
        f.close()


def test_eof_on_one_fd_is_tun_broken_and_close_closes_every_fd() -> None:
    f = Fake(queues=2)
    fds = [q.fd for q in f.tun._qs]
    f.peers[1].close()

    async def eof() -> None:
        with pytest.raises(TunBroken):
            for _ in range(3):
                await asyncio.wait_for(f.tun.recv_many(), 5)

    asyncio.run(eof())
    f.tun.close()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    f.peers[0].close()


def test_constructor_checks_fds_and_codecs() -> None:
    with pytest.raises(ValueError):
        InlineTun("x", [])
    with pytest.raises(ValueError):
        InlineTun("x", [1, 2], codecs=[OffloadCodec()])


def test_a_busy_fd_does_not_starve_the_others() -> None:
    f = Fake(queues=2)
    try:
        busy = [udp4(6000, seq) for seq in range(8)]
        for p in busy:
            f.peers[0].send(p)
        quiet = udp4(6001, 0)
        f.peers[1].send(quiet)

        async def main() -> list[list[bytes]]:
            return [await asyncio.wait_for(f.tun.recv_many(3), 5) for _ in range(2)]

        first, second = asyncio.run(main())
        # fd 0 alone could fill both batches; the first fd read rotates, so fd 1 is served.
        assert quiet in first + second
        assert [p for p in first + second if p != quiet] == busy[: len(first + second) - 1]
    finally:
        f.close()


def test_split_by_flow_with_an_offset_hashes_the_packet_after_it() -> None:
    """Frames (a 10-byte virtio_net_hdr first) go to the queue their packet would."""
    packets = [
        bytes([0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, i % 7, 10, 0, 0, 2])
        + bytes([0, i % 5, 0, 80]) + bytes(16)
        for i in range(40)
    ]  # fmt: skip
    frames = [bytes([i % 3]) * 10 + p for i, p in enumerate(packets)]
    by_packet = split_by_flow(packets, 4)
    by_frame = split_by_flow(frames, 4, offset=10)
    assert [[p[10:] for p in g] for g in by_frame] == by_packet
    assert sum(1 for g in by_packet if g) > 1  # the flows really spread
