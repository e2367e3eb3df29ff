"""Tests for wiretun.testing.memorytun: the in-memory TUN keeps InlineTun's contract
(order, batch limits, backpressure, closing) without a device."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from wiretun.testing.memorytun import MemoryTun
from wiretun.testing.wgpair import ipv4_packet
from wiretun.tun import InlineTun, QueueFull, TunClosed, TunDevice
from wiretun.tunnel.loop import TunPort

# What is sent must be IP packets (InvalidPacket otherwise, as with a real TUN).
P = {n: ipv4_packet("10.0.0.1", "10.0.0.2", b"%d" % n) for n in range(1, 8)}


def test_offers_the_inline_tun_methods_the_loop_uses() -> None:
    tun: TunPort = MemoryTun()  # mypy checks it against the loop's protocol
    device: TunDevice = MemoryTun()  # and against the TUN contract (test_tun_conformance)
    assert device.codec_stats() == []
    for name in ("recv_many", "send_ready", "send_many", "send", "close", "stats"):
        ours, theirs = getattr(MemoryTun, name), getattr(InlineTun, name)
        assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs), name
        assert list(inspect.signature(ours).parameters) == list(
            inspect.signature(theirs).parameters
        ), name
    assert isinstance(tun, MemoryTun) and tun.queues == 1 and not tun.uso


def test_recv_many_keeps_order_and_the_batch_limit() -> None:
    async def main() -> None:
        tun = MemoryTun()
        tun.inject([b"a", b"b", b"c"])
        tun.inject([b"d"])
        assert await tun.recv_many(2) == [b"a", b"b"]
        assert await tun.recv_many(10) == [b"c", b"d"]
        waiter = asyncio.create_task(tun.recv_many(10))
        await asyncio.sleep(0.01)
        assert not waiter.done()  # nothing to read: it waits
        tun.inject([b"e"])
        assert await asyncio.wait_for(waiter, 1) == [b"e"]
        with pytest.raises(ValueError, match="positive"):
            await tun.recv_many(0)
        total = tun.stats().total
        assert (total.rx_packets, total.rx_batches, total.rx_bytes) == (5, 3, 5)

    asyncio.run(main())


def test_send_side_holds_capacity_then_refuses_until_drained() -> None:
    async def main() -> None:
        tun = MemoryTun(capacity=3)
        assert tun.send_many([P[1], P[2]]) == 2
        assert tun.send_many([P[3], P[4], P[5]]) == 1  # one place left
        with pytest.raises(QueueFull):
            tun.send(P[6])
        ready = asyncio.create_task(tun.send_ready())
        await asyncio.sleep(0.01)
        assert not ready.done() and tun.waited_for_room == 1
        assert tun.drain() == [P[1], P[2], P[3]]
        await asyncio.wait_for(ready, 1)
        tun.send(P[7])
        assert list(tun.held) == [P[7]] and tun.delivered == [P[1], P[2], P[3]]
        total = tun.stats().total
        assert (total.tx_packets, total.refused, total.tx_batches) == (4, 3, 3)

    asyncio.run(main())


def test_close_wakes_waiters_and_counts_undrained_packets() -> None:
    async def main() -> None:
        tun = MemoryTun(capacity=1)
        tun.send(P[1])
        reader = asyncio.create_task(tun.recv_many())
        writer = asyncio.create_task(tun.send_ready())
        await asyncio.sleep(0.01)
        tun.close()
        tun.close()  # idempotent
        for task in (reader, writer):
            with pytest.raises(TunClosed):
                await asyncio.wait_for(task, 1)
        assert tun.closed
        assert dict(tun.stats().total.tx_drops) == {"closed": 1}
        with pytest.raises(TunClosed):
            tun.send_many([P[2]])
        with pytest.raises(TunClosed):
            tun.inject([b"z"])

    asyncio.run(main())


def test_busy_reader_lets_other_tasks_run() -> None:
    async def main() -> None:
        tun = MemoryTun()
        tun.inject([b"p"] * 1000)
        ticks = 0

        async def other() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(other())
        for _ in range(10):
            await tun.recv_many(1)
        task.cancel()
        assert ticks >= 9  # one yield per read that did not wait

    asyncio.run(main())
