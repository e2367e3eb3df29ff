"""InlineTun: the queue fds of one TUN device served by the asyncio loop thread itself, no
helper threads.

The threaded `Tun` hands every batch across threads (eventfd kicks, call_soon_threadsafe,
GIL handoffs). Under the GIL those threads run no work in parallel, so here the loop reads
the non-blocking fds until EAGAIN (add_reader only when all are empty) and writes directly
(add_writer only on a fd whose kernel queue is full).
"""

from __future__ import annotations

import asyncio
import os
import select
from collections import deque
from collections.abc import Callable, Sequence

from wiretun.tun.base import TunBase, check_packets
from wiretun.tun.codec import Codec
from wiretun.tun.device import LinkProbe
from wiretun.tun.errors import QueueFull, TunBroken, TunBusy, TunError
from wiretun.tun.queue import encode_batch, read_batch, try_write
from wiretun.tun.stats import QueueCounters, count
from wiretun.tun.tun import (
    DEFAULT_MAX_BATCH,
    DEFAULT_OUTBOUND_CAPACITY,
    open_device,
    queue_of,
    split_by_flow,
)


class _Queue:
    """One queue fd: its codec, counters and the frames waiting for room in its kernel queue
    (each with the packets it carries)."""

    __slots__ = (
        "codec",
        "counters",
        "decode",
        "fd",
        "index",
        "pending",
        "pending_packets",
        "write_failed",
        "writer_armed",
    )

    def __init__(self, index: int, fd: int, codec: Codec | None) -> None:
        self.index = index
        self.fd = fd
        self.codec = codec
        self.decode: Callable[[bytes], list[bytes]] | None = None if codec is None else codec.decode
        self.write_failed: Callable[[bytes, OSError], list[bytes] | None] | None = getattr(
            codec, "write_failed", None
        )
        self.counters = QueueCounters()
        self.pending: deque[tuple[bytes, int]] = deque()
        self.pending_packets = 0
        self.writer_armed = False


class InlineTun(TunBase):
    """A TUN device (one or more queue fds) driven from the running asyncio loop, with the
    receive/send API `Tun` offers coroutines: `recv_many`, `send_ready`, `send_many`, `send`.

    Inbound: each fd with packets (a private epoll says which) is read until EAGAIN in turn
    (the first fd read rotates per call), so every fd's packets come out in arrival order.
    Outbound: packet -> fd `flow_hash(packet) % queues`, as `Tun`'s writers, so a flow never
    races itself. Frames a fd will not take yet wait in that fd's FIFO and go out when it is
    writable; all fds share one budget of `outbound_capacity` waiting packets, and
    `send`/`send_many` refuse what does not fit.
    """

    def __init__(
        self,
        name: str,
        fds: Sequence[int],
        *,
        codecs: Sequence[Codec] | None = None,
        probe: LinkProbe | None = None,
        outbound_capacity: int = DEFAULT_OUTBOUND_CAPACITY,
    ) -> None:
        """Take ownership of non-blocking queue fds (one codec per fd, or None); use
        `InlineTun.open` instead."""
        if not fds:
            raise ValueError("an InlineTun needs at least one queue fd")
        if codecs is not None and len(codecs) != len(fds):
            raise ValueError("one codec per queue fd")
        if outbound_capacity < 1:
            raise ValueError("outbound_capacity must be positive")
        self._init_base(name, probe, codecs)
        self._qs: tuple[_Queue, ...] = tuple(
            _Queue(i, fd, None if codecs is None else codecs[i]) for i, fd in enumerate(fds)
        )
        self._by_fd = {q.fd: q for q in self._qs}
        self._epoll: select.epoll | None = None
        if len(fds) > 1:
            self._epoll = select.epoll(len(fds))
            for fd in fds:
                self._epoll.register(fd, select.EPOLLIN)
        self._capacity = outbound_capacity
        self._error: TunBroken | None = None
        self._leftover: list[bytes] = []  # decoded packets beyond the last `max`
        self._next_read = 0  # the fd read first by the next recv_many (fairness)
        self._pending_packets = 0  # over all fds
        self._room: asyncio.Future[None] | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._receiving = False  # a task is in recv_many (one at a time)
        self._reader_fd: int | None = None  # the fd our reader is registered on, if any
        self._stale = False  # the reader's next call reports what the woken waiter reads
        self._busy = False  # the last recv_many returned without waiting
        self._drained = False  # the last read found every fd empty (EAGAIN)
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def open(
        cls,
        name: str,
        *,
        queues: int = 1,
        mtu: int | None = None,
        offload: bool = False,
        verify_checksums: bool = True,
        outbound_capacity: int = DEFAULT_OUTBOUND_CAPACITY,
        frames: bool = False,
    ) -> InlineTun:
        """Create TUN device `name` exclusively with `queues` queue fds (as `Tun.open`, whose
        `frames` it shares); it goes away at `close()`."""
        fds, codecs, probe = open_device(
            name,
            queues=queues,
            mtu=mtu,
            offload=offload,
            verify_checksums=verify_checksums,
            frames=frames,
        )
        return cls(name, fds, codecs=codecs, probe=probe, outbound_capacity=outbound_capacity)

    # --- receive ---

    async def recv_many(self, max: int = DEFAULT_MAX_BATCH) -> list[bytes]:
        """Wait for at least one packet; return up to `max` packets, each fd's in arrival
        order. Raises TunClosed after close, TunBroken once a fd failed (read error or EOF),
        and TunBusy while another task waits here (its wake-up would be lost to one of us)."""
        if max < 1:
            raise ValueError("max must be positive")
        if self._receiving:
            raise TunBusy(f"TUN {self._name!r}: another task is already waiting in recv_many")
        self._receiving = True
        try:
            # A read that finds packets does not suspend: after a call that returned without
            # waiting, yield once, or a busy TUN would starve the caller's other tasks (the other
            # direction, timers). After a wait there is no need: an idle packet goes straight on.
            # When the last read emptied the fds, waiting is the yield (no read to find nothing).
            if self._busy and not self._drained:
                await asyncio.sleep(0)
            self._busy = True
            qs = self._qs
            n = len(qs)
            while True:
                self._check_open()
                if self._leftover:
                    out, self._leftover = self._leftover[:max], self._leftover[max:]
                    return out
                if self._error is not None:
                    raise self._error
                if self._drained:
                    self._busy = False
                    await self._readable()
                    self._drained = False
                    continue
                ready: Sequence[_Queue]
                if n == 1:
                    ready = qs
                else:
                    # Only the fds with packets: an EAGAIN read costs ~4x an epoll poll.
                    by_fd = self._by_fd
                    ready = [by_fd[fd] for fd, _ in self._epoll.poll(0)] if self._epoll else []
                out = []
                m = len(ready)
                start = self._next_read % m if m > 1 else 0
                self._next_read += 1
                drained = True
                for k in range(m):
                    q = ready[(start + k) % m]
                    batch, empty, error = read_batch(
                        q.fd, q.decode, max - len(out), q.counters, q.index
                    )
                    out += batch
                    if error is not None:
                        self._error = error
                        drained = False
                        break
                    drained = drained and empty
                    if len(out) >= max:
                        drained = drained and k == m - 1
                        break
                if len(out) > max:  # a GSO frame split into more than was asked for
                    out, self._leftover = out[:max], out[max:]
                self._drained = drained
                if out:
                    return out
        finally:
            self._receiving = False

    async def _readable(self) -> None:
        """Wait until some fd is readable (or we are closed).

        The reader stays registered after a wake: the caller reads, and at idle waits again
        soon, so no epoll_ctl pair per packet. Level-triggered, it must not stay while nobody
        waits (backpressure keeps the caller away): it fires once then and removes itself."""
        loop = self._loop = asyncio.get_running_loop()
        fut = self._read_waiter = loop.create_future()
        if self._reader_fd is None:
            # Several fds: our epoll fd is readable when any of them is.
            fd = self._qs[0].fd if self._epoll is None else self._epoll.fileno()
            loop.add_reader(fd, self._on_readable)
            self._reader_fd = fd
        try:
            await fut
        except BaseException:
            self._remove_reader()  # cancelled: nobody will read on our behalf
            raise
        finally:
            self._read_waiter = None

    def _on_readable(self) -> None:
        if self._stale:
            # The loop turn after a wake: epoll reports again the readiness that the waiter,
            # resumed earlier in this turn, has just consumed. Level-triggered, a real event
            # is reported again next turn.
            self._stale = False
            return
        fut = self._read_waiter
        if fut is None:
            self._remove_reader()
        elif not fut.done():
            fut.set_result(None)
            self._stale = True

    def _remove_reader(self) -> None:
        fd, self._reader_fd = self._reader_fd, None
        self._stale = False
        loop = self._loop
        if fd is not None and loop is not None and not self._closed and not loop.is_closed():
            loop.remove_reader(fd)

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

    def _queue_of(self, packet: bytes) -> _Queue:
        qs = self._qs
        return qs[queue_of(packet, len(qs), self._offset)] if len(qs) > 1 else qs[0]

    def send(self, packet: bytes) -> None:
        """Write one IP packet now (or queue it behind earlier ones of its fd); QueueFull when
        there is no room (exactly when `send_ready()` would wait); InvalidPacket (a
        ValueError) for what is not an IP packet."""
        self._check_open()
        check_packets((packet,), self._offset)
        q = self._queue_of(packet)
        if not self._has_room():
            q.counters.refused += 1
            raise QueueFull(f"TUN {self._name!r}: {self._capacity} packets already queued")
        self._write_batch(q, [packet])

    def send_many(self, packets: Sequence[bytes]) -> int:
        """Write as many of `packets` as fit (one encode per fd), each flow in order; return
        how many were taken (the rest count as refused). Never blocks. InvalidPacket (a
        ValueError) if any is not an IP packet: then none is written."""
        self._check_open()
        check_packets(packets, self._offset)
        room = self._capacity - self._pending_packets
        accepted = list(packets[: max(room, 0)]) if room < len(packets) else list(packets)
        for p in packets[len(accepted) :]:
            self._queue_of(p).counters.refused += 1
        if not accepted:
            return 0
        qs = self._qs
        if len(qs) == 1:
            self._write_batch(qs[0], accepted)
        else:
            for q, group in zip(qs, split_by_flow(accepted, len(qs), self._offset), strict=True):
                if group:
                    self._write_batch(q, group)
        return len(accepted)

    def _write_batch(self, q: _Queue, packets: list[bytes]) -> None:
        counters = q.counters
        good, frames = encode_batch(packets, q.codec, counters)
        counters.tx_batches += 1
        if q.pending:
            # Order: behind what is already waiting. Packets per frame are not known after
            # coalescing, so the batch is charged to its first frame.
            self._queue(q, frames, good)
            return
        fd, write_failed = q.fd, q.write_failed
        written = nbytes = 0
        for i, frame in enumerate(frames):
            try:
                result = try_write(fd, frame, counters, write_failed)
            except BlockingIOError:
                # How many packets the written frames held is unknown after coalescing:
                # charge the rest of the batch with at least one per written frame less.
                self._queue(q, frames[i:], good - written)
                break
            if result is True:
                written += 1
                nbytes += len(frame)
            elif result is not False:
                self._queue(q, result, 0)  # the codec's plain frames: written when writable
                written += 1  # a frame's worth of packets is on its way
        counters.tx_frames += written
        counters.tx_bytes += nbytes
        counters.tx_packets += good if written == len(frames) else written

    def _queue(self, q: _Queue, frames: list[bytes], packets: int) -> None:
        if not frames:
            return
        q.pending.append((frames[0], packets))
        q.pending.extend((f, 0) for f in frames[1:])
        q.pending_packets += packets
        self._pending_packets += packets
        if not q.writer_armed:
            loop = self._loop = asyncio.get_running_loop()
            loop.add_writer(q.fd, self._flush, q)
            q.writer_armed = True

    def _flush(self, q: _Queue) -> None:
        """`q`'s fd is writable: send what waits there, in order, until EAGAIN."""
        pending, counters, fd = q.pending, q.counters, q.fd
        while pending:
            frame, packets = pending[0]
            try:
                result = try_write(fd, frame, counters, None)
            except BlockingIOError:
                break
            pending.popleft()
            q.pending_packets -= packets
            self._pending_packets -= packets
            if result is True:
                counters.tx_frames += 1
                counters.tx_bytes += len(frame)
                counters.tx_packets += max(packets, 1)
        if not pending and q.writer_armed and self._loop is not None:
            self._loop.remove_writer(fd)
            q.writer_armed = False
        room = self._room
        if room is not None and not room.done() and self._has_room():
            room.set_result(None)

    # --- stats, close ---

    def _check_link(self) -> None:
        if self._probe is None or self._closed:
            return
        try:
            info = self._probe.query()
        except TunError:
            return
        self._note_link(info)

    def close(self) -> None:
        """Close the fds (the device disappears); waiters raise TunClosed. Idempotent."""
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        live_loop = loop is not None and not loop.is_closed()
        for q in self._qs:
            if q.pending_packets:
                count(q.counters.tx_drops, "closed", q.pending_packets)
            q.pending.clear()
            q.pending_packets = 0
            if live_loop:
                assert loop is not None
                loop.remove_writer(q.fd)
                loop.remove_reader(q.fd)
        self._pending_packets = 0
        for waiter in (self._room, self._read_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if self._epoll is not None:
            if live_loop:
                assert loop is not None
                loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
        for q in self._qs:
            os.close(q.fd)
        if self._probe is not None:
            self._probe.close()
