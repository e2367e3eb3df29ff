"""The channel pieces under Tun: Wakeup and the inbound batch FIFO."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time

import pytest

from wiretun.tun import TunBroken, queue
from wiretun.tun.queue import Inbound, TunQueue, Wakeup


def set_and_fire(flag: list[bool], w: Wakeup) -> None:
    flag.append(True)
    w.fire()


def test_wakeup_sync_wait_is_woken_from_another_thread() -> None:
    w = Wakeup()
    flag: list[bool] = []
    threading.Timer(0.05, set_and_fire, (flag, w)).start()
    assert w.wait_sync(lambda: bool(flag), timeout=5)
    assert not w.armed


def test_wakeup_sync_wait_times_out() -> None:
    w = Wakeup()
    start = time.monotonic()
    assert not w.wait_sync(lambda: False, timeout=0.05)
    assert time.monotonic() - start >= 0.05
    assert not w.armed


def test_wakeup_async_wait_is_woken_from_a_thread() -> None:
    w = Wakeup()
    flag: list[bool] = []

    async def main() -> None:
        threading.Timer(0.05, set_and_fire, (flag, w)).start()
        await asyncio.wait_for(w.wait_async(lambda: bool(flag)), 5)

    asyncio.run(main())
    assert flag


def test_wakeup_fire_without_waiters_is_a_no_op() -> None:
    w = Wakeup()
    w.fire()
    assert w.wait_sync(lambda: True, timeout=0)


def test_inbound_keeps_arrival_order_and_splits_batches() -> None:
    ch = Inbound(capacity=100, readers=2)
    spaced: list[int] = []
    ch.on_space = lambda: spaced.append(1)
    ch.put(0, [b"a", b"b", b"c"])
    ch.put(1, [b"d"])
    ch.put(0, [b"e", b"f"])
    assert ch.occupancy() == 6
    assert ch.take(2) == [b"a", b"b"]
    assert ch.take(10) == [b"c", b"d", b"e", b"f"]
    assert ch.take(10) == []
    assert ch.occupancy() == 0
    assert len(spaced) == 2


def test_inbound_room_and_error_after_earlier_packets() -> None:
    ch = Inbound(capacity=3, readers=1)
    ch.put(0, [b"a", b"b", b"c"])
    assert not ch.has_room()
    err = TunBroken("queue 0: end of file")
    ch.put_error(err)
    assert ch.take(10) == [b"a", b"b", b"c"]
    assert ch.has_room()
    with pytest.raises(TunBroken):
        ch.take(10)
    with pytest.raises(TunBroken):
        ch.take(10)


def test_inbound_discard_counts_per_reader() -> None:
    ch = Inbound(capacity=10, readers=2)
    ch.put(1, [b"x", b"y"])
    ch.put(0, [b"z"])
    assert ch.discard() == [1, 2]
    assert not ch.nonempty()


def test_encode_batch_passes_every_packet_and_counts_a_refused_batch() -> None:
    # The packets were checked by send/send_many (base.check_packets): none is filtered.
    from wiretun.tun.stats import QueueCounters

    counters = QueueCounters()
    assert queue.encode_batch([b"a", b"b"], None, counters) == (2, [b"a", b"b"])
    assert queue.encode_batch([b"a", b"b"], _RefusingCodec(), counters) == (0, [])
    assert dict(counters.tx_drops) == {"encode: no": 2}


class _RefusingCodec:
    def decode(self, frame: bytes) -> list[bytes]:
        return [frame]

    def encode(self, packets: list[bytes]) -> list[bytes]:
        raise ValueError("no")


class _BuggyCodec:
    """Decodes frames as packets, but a frame starting with b"!" trips a bug."""

    def decode(self, frame: bytes) -> list[bytes]:
        if frame.startswith(b"!"):
            raise RuntimeError("codec bug")
        return [frame]

    def encode(self, packets: list[bytes]) -> list[bytes]:
        return packets


def test_reader_survives_a_codec_that_raises(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        queue, "_logged_decode_bugs", set(), raising=False
    )  # fresh "logged once" memory
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    close_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    inbound = Inbound(capacity=100, readers=1)
    q = TunQueue(
        0,
        ours.detach(),
        inbound=inbound,
        close_fd=close_fd,
        codec=_BuggyCodec(),
        max_batch=8,
        on_written=lambda: None,
        thread_prefix="test-buggy",
    )
    q.start()
    try:
        with caplog.at_level(logging.WARNING, logger="wiretun.tun.queue"):
            for frame in (b"!one", b"!two", b"good"):
                kernel.send(frame)
            got: list[bytes] = []
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                inbound.readable.wait_sync(inbound.nonempty, 0.1)
                got += inbound.take(10)
        assert got == [b"good"]
        assert q.reader.is_alive()
        assert q.counters.rx_drops == {"decode_error": 2}
        warnings = [r for r in caplog.records if "decode failed" in r.getMessage()]
        assert len(warnings) == 1 and warnings[0].exc_info  # once, with the traceback
    finally:
        q.closing = True
        os.eventfd_write(close_fd, 1)
        stopped = q.join(time.monotonic() + 5)
        q.release(stopped)
        os.close(close_fd)
        kernel.close()
    assert stopped
