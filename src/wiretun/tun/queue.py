"""One TUN queue fd served by a reader and a writer thread, and the bounded channels between
those threads and the consumer (asyncio or plain threads)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable

from wiretun.tun.codec import Codec, IdentityCodec
from wiretun.tun.errors import TunBroken
from wiretun.tun.stats import QueueCounters, count

log = logging.getLogger(__name__)

MAX_FRAME = 65535 + 10  # an IP packet of 64 KiB plus a virtio_net_hdr
_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT
# Codec bug kinds already logged with a traceback: a frame that trips one will recur.
_logged_decode_bugs: set[str] = set()


def _wake_future(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Wakeup:
    """Wakes whoever waits for a condition, from any thread, and costs one attribute read
    when nobody waits (so producers may call `fire` once per batch)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.armed = False

    def _arm(self, cb: Callable[[], None]) -> None:
        with self._lock:
            self._callbacks.append(cb)
            self.armed = True

    def _disarm(self, cb: Callable[[], None]) -> None:
        with self._lock:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(cb)
            self.armed = bool(self._callbacks)

    def fire(self) -> None:
        if not self.armed:
            return
        with self._lock:
            callbacks, self._callbacks = self._callbacks, []
            self.armed = False
        for cb in callbacks:
            cb()

    async def wait_async(self, ready: Callable[[], bool]) -> None:
        """Return once `ready()` is true; `ready` is re-checked after arming, so a `fire`
        between the caller's check and the wait is never lost."""
        loop = asyncio.get_running_loop()
        while not ready():
            fut: asyncio.Future[None] = loop.create_future()

            def cb(fut: asyncio.Future[None] = fut) -> None:
                # The loop may be gone when a thread fires late; nobody is left to wake.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_wake_future, fut)

            self._arm(cb)
            try:
                if ready():
                    return
                await fut
            finally:
                self._disarm(cb)

    def wait_sync(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        """Block until `ready()` (True) or until `timeout` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not ready():
            event = threading.Event()
            self._arm(event.set)
            try:
                if ready():
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                event.wait(remaining)
            finally:
                self._disarm(event.set)
        return True


class Inbound:
    """Bounded FIFO of packet batches from N reader threads to the consumer, in arrival order.

    The bound is in packets and soft by at most one batch per reader: a reader checks for room
    before reading a batch. Occupancy is put minus taken, each counter having one writer.
    """

    def __init__(self, capacity: int, readers: int) -> None:
        self.capacity = capacity
        # Each batch travels with the index of the reader that read it (for close accounting).
        self._batches: deque[tuple[int, list[bytes]] | TunBroken] = deque()
        self._put = [0] * readers
        self._taken = 0
        self._consumer = threading.Lock()
        self.readable = Wakeup()
        self.error: TunBroken | None = None
        self.on_space: Callable[[], None] = lambda: None

    def occupancy(self) -> int:
        return sum(self._put) - self._taken

    def has_room(self) -> bool:
        return self.occupancy() < self.capacity

    def nonempty(self) -> bool:
        return bool(self._batches)

    def put(self, reader: int, batch: list[bytes]) -> None:
        # Count first: occupancy may overstate for an instant, never understate.
        self._put[reader] += len(batch)
        self._batches.append((reader, batch))
        self.readable.fire()

    def put_error(self, error: TunBroken) -> None:
        self._batches.append(error)
        self.readable.fire()

    def take(self, limit: int) -> list[bytes]:
        """Up to `limit` packets in arrival order, [] if none; TunBroken after a failed queue's
        earlier packets were all delivered."""
        with self._consumer:
            if self.error is not None:
                raise self.error
            out: list[bytes] = []
            batches = self._batches
            while batches and len(out) < limit:
                item = batches.popleft()
                if isinstance(item, TunBroken):
                    self.error = item
                    break
                reader, batch = item
                room = limit - len(out)
                if len(batch) <= room:
                    out += batch
                else:
                    out += batch[:room]
                    batches.appendleft((reader, batch[room:]))
            self._taken += len(out)
        if out:
            self.on_space()
        elif self.error is not None:
            raise self.error
        return out

    def discard(self) -> list[int]:
        """Empty the channel at close; the packets thrown away, per reader."""
        lost = [0] * len(self._put)
        for item in self._batches:
            if not isinstance(item, TunBroken):
                lost[item[0]] += len(item[1])
        self._batches.clear()
        return lost


def read_batch(
    fd: int,
    decode: Callable[[bytes], list[bytes]] | None,
    limit: int,
    counters: QueueCounters,
    index: int,
) -> tuple[list[bytes], bool, TunBroken | None]:
    """Read frames from non-blocking `fd` until `limit` packets, EAGAIN or an error; decode
    them (None: frames are packets) and count. Returns (packets, drained, error)."""
    batch: list[bytes] = []
    nbytes = 0
    drained = False
    error: TunBroken | None = None
    read = os.read
    while len(batch) < limit:
        try:
            frame = read(fd, MAX_FRAME)
        except BlockingIOError:
            drained = True
            break
        except OSError as e:
            error = TunBroken(f"queue {index}: read failed: {e.strerror}")
            error.__cause__ = e
            break
        if not frame:
            error = TunBroken(f"queue {index}: end of file")
            break
        nbytes += len(frame)
        counters.rx_frames += 1
        if decode is None:
            batch.append(frame)
            continue
        try:
            batch += decode(frame)
        except ValueError as e:
            count(counters.rx_drops, f"decode: {e}")
        except Exception as e:  # a codec bug must not kill the reader (recv would hang)
            count(counters.rx_drops, "decode_error")
            kind = type(e).__qualname__
            if kind not in _logged_decode_bugs:
                _logged_decode_bugs.add(kind)
                log.warning("TUN queue %d: decode failed, frame dropped", index, exc_info=True)
    if batch:
        counters.rx_packets += len(batch)
        counters.rx_bytes += nbytes
        counters.rx_batches += 1
    return batch, drained, error


def encode_batch(
    packets: list[bytes], codec: Codec | None, counters: QueueCounters
) -> tuple[int, list[bytes]]:
    """(packets carried, frames to write) for one write batch. The packets were checked
    when they were sent (base.check_packets raises InvalidPacket before any is queued), so
    none is filtered here; a batch the codec refuses is counted as dropped."""
    if codec is None:
        return len(packets), packets
    try:
        return len(packets), codec.encode(packets)
    except ValueError as e:
        count(counters.tx_drops, f"encode: {e}", len(packets))
        return 0, []


def try_write(
    fd: int,
    frame: bytes,
    counters: QueueCounters,
    write_failed: Callable[[bytes, OSError], list[bytes] | None] | None,
) -> bool | list[bytes]:
    """Write one frame to non-blocking `fd`: True if written, False if refused (counted by
    errno name), or the frames the codec offers to write instead. BlockingIOError propagates."""
    try:
        n = os.write(fd, frame)
    except BlockingIOError:
        raise
    except OSError as e:
        if write_failed is not None:
            instead = write_failed(frame, e)
            if instead is not None:
                return instead
        count(counters.tx_drops, errno.errorcode.get(e.errno or 0, str(e.errno)))
        return False
    if n != len(frame):
        count(counters.tx_drops, "short_write")
        return False
    return True


class TunQueue:
    """One queue fd: a reader thread draining it into `Inbound`, a writer thread draining its
    own outbound FIFO into it. Both wait in poll() on the fd, a private kick eventfd and the
    Tun's shared close eventfd, so close wakes them even mid-wait."""

    def __init__(
        self,
        index: int,
        fd: int,
        *,
        inbound: Inbound,
        close_fd: int,
        codec: Codec,
        max_batch: int,
        on_written: Callable[[], None],
        thread_prefix: str,
    ) -> None:
        self.index = index
        self.fd = fd
        self.counters = QueueCounters()
        self.done = 0  # packets taken out of the outbound FIFO (written or dropped); writer-owned
        self.closing = False
        self._inbound = inbound
        self._close_fd = close_fd
        self._codec = codec
        self._identity = isinstance(codec, IdentityCodec)
        self._write_failed: Callable[[bytes, OSError], list[bytes] | None] | None = getattr(
            codec, "write_failed", None
        )
        self._max_batch = max_batch
        self._on_written = on_written
        self._out: deque[list[bytes]] = deque()
        self._reader_kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._writer_kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.reader_paused = False
        self._writer_idle = False
        self.reader = threading.Thread(
            target=self._read_loop, name=f"{thread_prefix}-r{index}", daemon=True
        )
        self.writer = threading.Thread(
            target=self._write_loop, name=f"{thread_prefix}-w{index}", daemon=True
        )

    def start(self) -> None:
        self.reader.start()
        self.writer.start()

    # --- producer side (any one thread at a time) ---

    def submit(self, batch: list[bytes]) -> None:
        self._out.append(batch)
        if self._writer_idle:
            os.eventfd_write(self._writer_kick, 1)

    def kick_reader(self) -> None:
        if self.reader_paused:
            os.eventfd_write(self._reader_kick, 1)

    def pending(self) -> int:
        return sum(len(b) for b in self._out)

    # --- reader thread ---

    def _read_loop(self) -> None:
        fd, inbound, counters = self.fd, self._inbound, self.counters
        ready = select.poll()
        ready.register(fd, _POLLIN)
        ready.register(self._close_fd, _POLLIN)
        room = select.poll()
        room.register(self._reader_kick, _POLLIN)
        room.register(self._close_fd, _POLLIN)
        decode = None if self._identity else self._codec.decode
        limit, index = self._max_batch, self.index
        while not self.closing:
            if not inbound.has_room():
                self.reader_paused = True
                if not inbound.has_room():
                    counters.reader_paused += 1
                    room.poll()
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(self._reader_kick)
                self.reader_paused = False
                continue
            batch, drained, error = read_batch(fd, decode, limit, counters, index)
            if batch:
                inbound.put(index, batch)
            if error is not None:
                if not self.closing:
                    log.error("TUN %s", error)
                    inbound.put_error(error)
                return
            if drained:
                ready.poll()

    # --- writer thread ---

    def _take_batch(self) -> list[bytes]:
        out: list[bytes] = []
        fifo, limit = self._out, self._max_batch
        while fifo and len(out) < limit:
            out += fifo.popleft()
        return out

    def _write_loop(self) -> None:
        idle = select.poll()
        idle.register(self._writer_kick, _POLLIN)
        idle.register(self._close_fd, _POLLIN)
        full = select.poll()
        full.register(self.fd, _POLLOUT)
        full.register(self._close_fd, _POLLIN)
        counters = self.counters
        drops = counters.tx_drops
        while not self.closing:
            batch = self._take_batch()
            if not batch:
                self._writer_idle = True
                if not self._out:
                    idle.poll()
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(self._writer_kick)
                self._writer_idle = False
                continue
            good, frames = encode_batch(batch, None if self._identity else self._codec, counters)
            written = nbytes = 0
            for i, frame in enumerate(frames):
                if self._write(frame, full):
                    written += 1
                    nbytes += len(frame)
                elif self.closing:
                    count(drops, "closed", len(frames) - i)
                    break
            # With offloads a frame may carry several packets; when some frames failed we
            # cannot tell how many packets the others held, so count conservatively.
            counters.tx_packets += good if written == len(frames) else written
            counters.tx_frames += written
            counters.tx_bytes += nbytes
            counters.tx_batches += 1
            self.done += len(batch)
            self._on_written()

    def _write(self, frame: bytes, full: select.poll) -> bool:
        """Write one frame, waiting while the fd is full; False if it was refused (counted)
        or the queue is closing."""
        while True:
            try:
                result = try_write(self.fd, frame, self.counters, self._write_failed)
            except BlockingIOError:
                full.poll()
                if self.closing:
                    return False
                continue
            if isinstance(result, bool):
                return result
            # The codec's plain frames instead (each one written, no second fallback).
            results = [self._write_plain(f, full) for f in result]
            return all(results)

    def _write_plain(self, frame: bytes, full: select.poll) -> bool:
        while True:
            try:
                result = try_write(self.fd, frame, self.counters, None)
            except BlockingIOError:
                full.poll()
                if self.closing:
                    return False
                continue
            return result is True

    # --- close ---

    def join(self, deadline: float) -> bool:
        for t in (self.reader, self.writer):
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))
        return not (self.reader.is_alive() or self.writer.is_alive())

    def release(self, threads_stopped: bool) -> None:
        """Close our fds; if a thread is stuck, leak the fds rather than let a reused number
        be read by it."""
        pending = self.pending()
        self._out.clear()
        if pending:
            count(self.counters.tx_drops, "closed", pending)
        if not threads_stopped:
            log.error("TUN queue %d: threads did not stop; leaking its fds", self.index)
            return
        for fd in (self.fd, self._reader_kick, self._writer_kick):
            os.close(fd)
