"""InlineTun: one TUN queue served by the asyncio loop thread itself, no helper threads.

The threaded `Tun` hands every batch across threads (eventfd kicks, call_soon_threadsafe,
GIL handoffs). With one queue under the GIL those threads run no work in parallel, so
here the loop reads the non-blocking fd until EAGAIN (add_reader only when it is empty)
and writes directly (add_writer only while the kernel's queue is full).
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Sequence
from types import TracebackType

from wiretun.tun.codec import Codec
from wiretun.tun.device import LinkProbe
from wiretun.tun.errors import QueueFull, TunBroken, TunClosed, TunError
from wiretun.tun.queue import encode_batch, read_batch, try_write
from wiretun.tun.stats import QueueCounters, TunStats, count
from wiretun.tun.tun import DEFAULT_MAX_BATCH, DEFAULT_OUTBOUND_CAPACITY, open_device


class InlineTun:
    """A single-queue TUN device driven from the running asyncio loop (same receive/send API
    as `Tun` for coroutines: `recv_many`, `send_ready`, `send_many`, `send`).

    Frames the kernel will not take yet wait in a FIFO (at most `outbound_capacity` packets)
    and go out when the fd is writable; `send`/`send_many` refuse what does not fit.
    """

    def __init__(
        self,
        name: str,
        fd: int,
        *,
        codec: Codec | None = None,
        probe: LinkProbe | None = None,
        outbound_capacity: int = DEFAULT_OUTBOUND_CAPACITY,
    ) -> None:
        """Take ownership of a non-blocking queue fd; use `InlineTun.open` instead."""
        if outbound_capacity < 1:
            raise ValueError("outbound_capacity must be positive")
        self._name = name
        self._fd = fd
        self._codec = codec
        self._write_failed = getattr(codec, "write_failed", None)
        self._probe = probe
        self._capacity = outbound_capacity
        self.counters = QueueCounters()
        self._closed = False
        self._error: TunBroken | None = None
        self._leftover: list[bytes] = []  # decoded packets beyond the last `max`
        # Frames waiting for room in the kernel queue, with the packets each carries.
        self._pending: deque[tuple[bytes, int]] = deque()
        self._pending_packets = 0
        self._writer_armed = False
        self._room: asyncio.Future[None] | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._foreign = 0
        self._foreign_seen = 0
        self._kernel_dropped: int | None = None

    @classmethod
    def open(
        cls,
        name: str,
        *,
        mtu: int | None = None,
        offload: bool = False,
        verify_checksums: bool = True,
        outbound_capacity: int = DEFAULT_OUTBOUND_CAPACITY,
    ) -> InlineTun:
        """Create TUN device `name` exclusively (as `Tun.open` with one queue); it goes away
        at `close()`."""
        fds, codecs, probe = open_device(
            name, queues=1, mtu=mtu, offload=offload, verify_checksums=verify_checksums
        )
        codec = codecs[0] if codecs is not None else None
        return cls(name, fds[0], codec=codec, probe=probe, outbound_capacity=outbound_capacity)

    @property
    def name(self) -> str:
        return self._name

    @property
    def queues(self) -> int:
        return 1

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return f"<InlineTun {self._name!r} {'closed' if self._closed else 'open'}>"

    def _check_open(self) -> None:
        if self._closed:
            raise TunClosed(f"TUN {self._name!r} is closed")

    # --- receive ---

    async def recv_many(self, max: int = DEFAULT_MAX_BATCH) -> list[bytes]:
        """Wait for at least one packet; return up to `max` packets in arrival order.
        Raises TunClosed after close, TunBroken once the fd failed (read error or EOF)."""
        if max < 1:
            raise ValueError("max must be positive")
        # A read that finds packets does not suspend: yield once per batch anyway, or a busy
        # TUN would starve the caller's other tasks (the other direction, timers).
        await asyncio.sleep(0)
        while True:
            self._check_open()
            if self._leftover:
                out, self._leftover = self._leftover[:max], self._leftover[max:]
                return out
            if self._error is not None:
                raise self._error
            decode = None if self._codec is None else self._codec.decode
            batch, drained, error = read_batch(self._fd, decode, max, self.counters, 0)
            self._error = error
            if len(batch) > max:  # a GSO frame split into more than was asked for
                batch, self._leftover = batch[:max], batch[max:]
            if batch:
                return batch
            if drained:
                await self._readable()

    async def _readable(self) -> None:
        """Wait until the fd is readable (or we are closed). The reader is registered only
        while waiting: level-triggered, it would spin while backpressure keeps us away."""
        loop = self._loop = asyncio.get_running_loop()
        fut = self._read_waiter = loop.create_future()
        loop.add_reader(self._fd, _wake, fut)
        try:
            await fut
        finally:
            self._read_waiter = None
            if not self._closed:
                loop.remove_reader(self._fd)

    # --- send ---

    def _has_room(self) -> bool:
        return self._pending_packets < self._capacity

    async def send_ready(self) -> None:
        """Return when at least one packet can be queued; TunClosed if closed meanwhile."""
        self._check_open()
        while not self._has_room():
            if self._room is None or self._room.done():
                self._room = asyncio.get_running_loop().create_future()
            await self._room
            self._check_open()

    def send(self, packet: bytes) -> None:
        """Write one IP packet now (or queue it behind earlier ones); QueueFull when there is
        no room (exactly when `send_ready()` would wait)."""
        self._check_open()
        if not self._has_room():
            self.counters.refused += 1
            raise QueueFull(f"TUN {self._name!r}: {self._capacity} packets already queued")
        self._write_batch([packet])

    def send_many(self, packets: Sequence[bytes]) -> int:
        """Write as many of `packets` as fit (one encode over the batch), in order; return how
        many were taken (the rest count as refused). Never blocks."""
        self._check_open()
        room = self._capacity - self._pending_packets
        if room <= 0:
            self.counters.refused += len(packets)
            return 0
        accepted = list(packets[:room]) if room < len(packets) else list(packets)
        self.counters.refused += len(packets) - len(accepted)
        self._write_batch(accepted)
        return len(accepted)

    def _write_batch(self, packets: list[bytes]) -> None:
        counters = self.counters
        good, frames = encode_batch(packets, self._codec, counters)
        counters.tx_batches += 1
        if self._pending:
            # Order: behind what is already waiting. Packets per frame are not known after
            # coalescing, so the batch is charged to its first frame.
            self._queue(frames, good)
            return
        fd, write_failed = self._fd, self._write_failed
        written = nbytes = 0
        for i, frame in enumerate(frames):
            try:
                result = try_write(fd, frame, counters, write_failed)
            except BlockingIOError:
                # How many packets the written frames held is unknown after coalescing:
                # charge the rest of the batch with at least one per written frame less.
                self._queue(frames[i:], good - written)
                break
            if result is True:
                written += 1
                nbytes += len(frame)
            elif result is not False:
                self._queue(result, 0)  # the codec's plain frames: written when writable
                written += 1  # a frame's worth of packets is on its way
        counters.tx_frames += written
        counters.tx_bytes += nbytes
        counters.tx_packets += good if written == len(frames) else written

    def _queue(self, frames: list[bytes], packets: int) -> None:
        if not frames:
            return
        pending = self._pending
        pending.append((frames[0], packets))
        pending.extend((f, 0) for f in frames[1:])
        self._pending_packets += packets
        if not self._writer_armed:
            loop = self._loop = asyncio.get_running_loop()
            loop.add_writer(self._fd, self._flush)
            self._writer_armed = True

    def _flush(self) -> None:
        """Writable: send what waits, in order, until EAGAIN."""
        pending, counters, fd = self._pending, self.counters, self._fd
        while pending:
            frame, packets = pending[0]
            try:
                result = try_write(fd, frame, counters, None)
            except BlockingIOError:
                return
            pending.popleft()
            self._pending_packets -= packets
            if result is True:
                counters.tx_frames += 1
                counters.tx_bytes += len(frame)
                counters.tx_packets += max(packets, 1)
        if self._writer_armed and self._loop is not None:
            self._loop.remove_writer(fd)
            self._writer_armed = False
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)

    # --- stats, close ---

    def _check_link(self) -> None:
        if self._probe is None or self._closed:
            return
        try:
            info = self._probe.query()
        except TunError:
            return
        if info.tx_dropped >= 0:
            self._kernel_dropped = info.tx_dropped
        if info.num_queues >= 0:
            self._foreign = max(0, info.num_queues - 1)
            self._foreign_seen = max(self._foreign_seen, self._foreign)

    def stats(self) -> TunStats:
        """An immutable snapshot (queries the device for foreign queues while open)."""
        self._check_link()
        return TunStats(
            name=self._name,
            queues=(self.counters.snapshot(0),),
            foreign_queues=self._foreign,
            foreign_seen=self._foreign_seen,
            kernel_dropped=self._kernel_dropped,
        )

    def close(self) -> None:
        """Close the fd (the device disappears); waiters raise TunClosed. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._pending_packets:
            count(self.counters.tx_drops, "closed", self._pending_packets)
        self._pending.clear()
        self._pending_packets = 0
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_writer(self._fd)
            loop.remove_reader(self._fd)
        for waiter in (self._room, self._read_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        os.close(self._fd)
        if self._probe is not None:
            self._probe.close()

    def __enter__(self) -> InlineTun:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> InlineTun:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
