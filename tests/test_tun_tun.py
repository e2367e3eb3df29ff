"""Tun over SOCK_SEQPACKET socketpairs standing in for queue fds (no root needed)."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from wiretun.packet import flow_hash
from wiretun.tun import QueueFull, Tun, TunBroken, TunClosed


def udp4(sport: int, seq: int, size: int = 40) -> bytes:
    """An IPv4/UDP packet whose IP total length is right (checksums are not needed here)."""
    payload = struct.pack("!I", seq) + bytes(size)
    udp = struct.pack("!HHHH", sport, 9, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))  # fmt: skip
    return ip + udp


class Fake:
    """A Tun over `n` socketpairs; `peers[i]` is the kernel side of queue i."""

    def __init__(self, n: int = 1, **kwargs: int) -> None:
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(n)]
        self.peers = [b for _, b in pairs]
        self.ours = [a for a, _ in pairs]
        for s in self.peers:
            s.settimeout(5)
        self.tun = Tun.from_fds([a.fileno() for a in self.ours], name="fake", **kwargs)
        for a in self.ours:
            a.detach()

    def close(self) -> None:
        self.tun.close()
        for s in self.peers:
            s.close()


@pytest.fixture
def fake() -> Iterator[Fake]:
    f = Fake()
    yield f
    f.close()


def test_recv_returns_packets_in_order_in_batches() -> None:
    f = Fake()
    try:
        packets = [udp4(1000, i) for i in range(250)]
        for p in packets:
            f.peers[0].send(p)
        got: list[bytes] = []
        while len(got) < len(packets):
            batch = f.tun.recv_batch(max=100, timeout=5)
            assert batch, "timed out"
            assert len(batch) <= 100
            got += batch
        assert got == packets
        q = f.tun.stats().queues[0]
        assert q.rx_packets == 250
        assert q.rx_bytes == sum(len(p) for p in packets)
        # All 250 were waiting before the reader's first read: it drained them in batches.
        assert q.rx_mean_batch > 1
    finally:
        f.close()


def test_recv_many_async_waits_then_returns(fake: Fake) -> None:
    async def main() -> list[bytes]:
        task = asyncio.ensure_future(fake.tun.recv_many())
        await asyncio.sleep(0.05)
        assert not task.done()
        fake.peers[0].send(udp4(1, 1))
        return await asyncio.wait_for(task, 5)

    assert asyncio.run(main()) == [udp4(1, 1)]


def test_recv_batch_timeout_returns_empty(fake: Fake) -> None:
    assert fake.tun.recv_batch(timeout=0.05) == []


def test_send_writes_packets_in_order(fake: Fake) -> None:
    packets = [udp4(5, i) for i in range(300)]
    for p in packets[:100]:
        fake.tun.send(p)
    assert fake.tun.send_many(packets[100:]) == 200
    assert [fake.peers[0].recv(2048) for _ in packets] == packets


def test_send_blocking(fake: Fake) -> None:
    fake.tun.send_blocking(udp4(7, 7), timeout=1)
    assert fake.peers[0].recv(2048) == udp4(7, 7)


def test_malformed_outbound_packets_are_refused_with_value_error(fake: Fake) -> None:
    for bad in (b"\x45garbage", b"", "not bytes", udp4(1, 2)[:-1]):
        with pytest.raises(ValueError):
            fake.tun.send(bad)  # type: ignore[arg-type]
    fake.tun.send(udp4(1, 2))
    assert fake.peers[0].recv(2048) == udp4(1, 2)
    deadline = time.monotonic() + 5
    while fake.tun.stats().queues[0].tx_packets < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    q = fake.tun.stats().queues[0]
    assert q.tx_drops == {}
    assert q.tx_packets == 1


def test_flows_stick_to_one_writer_in_order() -> None:
    f = Fake(4)
    try:
        packets = [udp4(2000 + flow, seq) for seq in range(50) for flow in range(16)]
        assert f.tun.send_many(packets) == len(packets)
        for i, peer in enumerate(f.peers):
            expected = [p for p in packets if flow_hash(p) % 4 == i]
            assert [peer.recv(2048) for _ in expected] == expected
        used = [q for q in f.tun.stats().queues if q.tx_packets]
        assert len(used) > 1
    finally:
        f.close()


def test_backpressure_queue_full_then_send_ready_wakes() -> None:
    f = Fake(outbound_capacity=16)
    try:

        async def main() -> None:
            tun = f.tun
            sent = refused = 0
            # Send until QueueFull persists after the writer had time to drain: the
            # "kernel" side (nobody reads the peer) is then full and the writer is stuck.
            for _ in range(100_000):
                try:
                    tun.send(udp4(3, sent))
                    sent += 1
                except QueueFull:
                    refused += 1
                    time.sleep(0.05)
                    try:
                        tun.send(udp4(3, sent))
                        sent += 1
                    except QueueFull:
                        refused += 1
                        break
            assert refused >= 2
            assert tun.stats().total.refused == refused
            ready = asyncio.ensure_future(tun.send_ready())
            await asyncio.sleep(0.1)
            assert not ready.done(), "send_ready must wait while the writer cannot drain"
            with pytest.raises(QueueFull):
                tun.send(udp4(3, sent))
            assert tun.send_many([udp4(3, sent)]) == 0
            received = []
            f.peers[0].setblocking(False)
            deadline = time.monotonic() + 5
            while not ready.done() and time.monotonic() < deadline:
                try:
                    received.append(f.peers[0].recv(2048))
                except BlockingIOError:
                    await asyncio.sleep(0.001)
            await asyncio.wait_for(ready, 1)
            tun.send(udp4(3, sent))  # room now: must not raise
            f.peers[0].setblocking(True)
            while len(received) < sent + 1:
                received.append(f.peers[0].recv(2048))
            # Nothing lost, nothing reordered by the wait.
            assert [struct.unpack_from("!I", p, 28)[0] for p in received] == list(range(sent + 1))
            assert tun.stats().total.refused == refused + 2

        asyncio.run(main())
    finally:
        f.close()


def test_inbound_backpressure_pauses_reader_without_loss() -> None:
    f = Fake(inbound_capacity=10, max_batch=5)
    try:
        packets = [udp4(9, i) for i in range(60)]
        for p in packets:
            f.peers[0].send(p)
        time.sleep(0.2)  # let the reader fill the channel and pause
        paused = f.tun.stats().queues[0]
        assert paused.rx_packets <= 10 + 5
        assert paused.reader_paused >= 1
        got: list[bytes] = []
        while len(got) < len(packets):
            batch = f.tun.recv_batch(timeout=5)
            assert batch
            got += batch
        assert got == packets
    finally:
        f.close()


def test_close_wakes_blocked_readers_within_a_second() -> None:
    f = Fake(2)
    errors: list[BaseException] = []

    def blocked_sync() -> None:
        try:
            f.tun.recv_batch()
        except TunClosed as e:
            errors.append(e)

    async def main() -> None:
        t = threading.Thread(target=blocked_sync)
        t.start()
        waiter = asyncio.ensure_future(f.tun.recv_many())
        await asyncio.sleep(0.1)
        start = time.monotonic()
        f.tun.close()
        elapsed = time.monotonic() - start
        with pytest.raises(TunClosed):
            await asyncio.wait_for(waiter, 1)
        t.join(1)
        assert not t.is_alive()
        assert elapsed < 1.0
        assert not any(th.name.startswith("tun-fake") for th in threading.enumerate())

    try:
        asyncio.run(main())
        assert len(errors) == 1
        f.tun.close()  # idempotent
        with pytest.raises(TunClosed):
            f.tun.send(udp4(1, 1))
        with pytest.raises(TunClosed):
            f.tun.recv_batch(timeout=0)
    finally:
        f.close()


def test_close_counts_undelivered_packets(fake: Fake) -> None:
    for i in range(5):
        fake.peers[0].send(udp4(1, i))
    deadline = time.monotonic() + 5
    while fake.tun.stats().queues[0].rx_packets < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    fake.tun.close()
    assert fake.tun.stats().queues[0].rx_drops == {"closed": 5}


def test_eof_ends_queue_and_surfaces_on_next_recv() -> None:
    f = Fake(2)
    try:
        f.peers[1].send(udp4(4, 0))
        f.peers[1].close()  # EOF on queue 1

        async def main() -> None:
            got = await asyncio.wait_for(f.tun.recv_many(), 5)
            assert got == [udp4(4, 0)]
            with pytest.raises(TunBroken, match="end of file"):
                await asyncio.wait_for(f.tun.recv_many(), 5)
            with pytest.raises(TunBroken):
                await asyncio.wait_for(f.tun.recv_many(), 5)

        asyncio.run(main())
    finally:
        f.tun.close()
        f.peers[0].close()


def test_stats_are_immutable(fake: Fake) -> None:
    s = fake.tun.stats()
    with pytest.raises(AttributeError):
        s.queues[0].rx_packets = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.queues[0].tx_drops["x"] = 1  # type: ignore[index]
    assert s.total.index == -1
