"""A TUN device in memory, for running the tunnel loop (or anything written against
`wiretun.tun.TunDevice`) without root: no fd, no kernel, the test plays the kernel's part."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from wiretun.tun.base import ClosedOnExit, check_packets
from wiretun.tun.errors import QueueFull, TunBusy, TunClosed
from wiretun.tun.stats import QueueCounters, TunStats, count
from wiretun.tun.tun import DEFAULT_MAX_BATCH, DEFAULT_OUTBOUND_CAPACITY

if TYPE_CHECKING:
    from wiretun.tun.gso import OffloadStats


class MemoryTun(ClosedOnExit):
    """A `TunDevice` (wiretun.tun.port) with one queue and no offloads, keeping the same
    contract as `InlineTun` (tests/test_tun_conformance.py runs it with both): one waiting
    receiver at a time (TunBusy), InvalidPacket for what is not an IP packet, QueueFull
    exactly when `send_ready()` would wait.

    `inject` is the kernel handing us packets (an application writing to the interface).
    What we send waits in `held`, the kernel's queue of at most `capacity` packets, until
    `drain()` moves it to `delivered`: a test decides when the kernel reads, so it can fill
    the queue and watch backpressure (`send_ready` waits, `send_many` takes what fits).
    """

    def __init__(self, name: str = "mem0", *, capacity: int = DEFAULT_OUTBOUND_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.name = name
        self.capacity = capacity
        self.held: deque[bytes] = deque()
        self.delivered: list[bytes] = []
        self.waited_for_room = 0  # send_ready calls that had to wait
        self._inbound: deque[bytes] = deque()
        self._counters = QueueCounters()
        self._readable: asyncio.Event | None = None
        self._room: asyncio.Event | None = None
        self._busy = False  # the last recv_many returned without waiting
        self._receiving = False  # a task is in recv_many
        self._closed = False

    # The same read-only facts InlineTun reports: one queue, no UDP super-packets.
    @property
    def queues(self) -> int:
        return 1

    @property
    def uso(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<MemoryTun {self.name!r} inbound={len(self._inbound)} held={len(self.held)} {state}>"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise TunClosed(f"TUN {self.name!r} is closed")

    # --- the kernel's side, driven by the test ---

    def inject(self, packets: Sequence[bytes]) -> None:
        """Packets for `recv_many`, in this order (the kernel writing to us)."""
        self._check_open()
        self._inbound.extend(packets)
        if self._readable is not None:
            self._readable.set()

    def drain(self) -> list[bytes]:
        """The kernel reads what we sent: `held` moves to `delivered` (and is returned)."""
        taken = list(self.held)
        self.held.clear()
        self.delivered.extend(taken)
        if self._room is not None:
            self._room.set()
        return taken

    # --- receive ---

    async def recv_many(self, max: int = DEFAULT_MAX_BATCH) -> list[bytes]:
        """Wait for at least one packet; return up to `max` in arrival order. TunClosed
        after close (also for a waiter), TunBusy while another task waits here."""
        if max < 1:
            raise ValueError("max must be positive")
        if self._receiving:
            raise TunBusy(f"TUN {self.name!r}: another task is already waiting in recv_many")
        self._receiving = True
        try:
            await self._wait_readable()
        finally:
            self._receiving = False
        n = min(max, len(self._inbound))
        out = [self._inbound.popleft() for _ in range(n)]
        c = self._counters
        c.rx_packets += n
        c.rx_frames += n
        c.rx_batches += 1
        c.rx_bytes += sum(map(len, out))
        return out

    async def _wait_readable(self) -> None:
        # As InlineTun: after a call that did not wait, yield once so that a busy TUN does
        # not starve the caller's other tasks.
        if self._busy:
            await asyncio.sleep(0)
        self._busy = True
        while not self._inbound:
            self._check_open()
            self._busy = False
            event = self._readable = self._readable or asyncio.Event()
            event.clear()
            await event.wait()
        self._check_open()

    # --- send ---

    def _room_left(self) -> int:
        return self.capacity - len(self.held)

    async def send_ready(self) -> None:
        """Return when at least one packet can be queued; TunClosed if closed meanwhile."""
        self._check_open()
        if self._room_left() <= 0:
            self.waited_for_room += 1
        while self._room_left() <= 0:
            event = self._room = self._room or asyncio.Event()
            event.clear()
            await event.wait()
            self._check_open()

    def send(self, packet: bytes) -> None:
        """Queue one packet; QueueFull when there is no room (exactly when `send_ready()`
        would wait); InvalidPacket (a ValueError) for what is not an IP packet."""
        self._check_open()
        check_packets((packet,))
        if self._room_left() <= 0:
            self._counters.refused += 1
            raise QueueFull(f"TUN {self.name!r}: {self.capacity} packets already queued")
        self._take([packet])

    def send_many(self, packets: Sequence[bytes]) -> int:
        """Queue as many of `packets` as fit, in order; return how many were taken (the rest
        count as refused). Never blocks. InvalidPacket (a ValueError) if any is not an IP
        packet: then none is taken."""
        self._check_open()
        check_packets(packets)
        taken = list(packets[: max(0, self._room_left())])
        self._counters.refused += len(packets) - len(taken)
        if taken:
            self._take(taken)
        return len(taken)

    def _take(self, packets: list[bytes]) -> None:
        # As the kernel keeps a copy: a bytearray changed later does not change `held`.
        self.held.extend(p if type(p) is bytes else bytes(p) for p in packets)
        c = self._counters
        c.tx_packets += len(packets)
        c.tx_frames += len(packets)
        c.tx_batches += 1
        c.tx_bytes += sum(map(len, packets))

    # --- stats, close ---

    def stats(self) -> TunStats:
        return TunStats(name=self.name, queues=(self._counters.snapshot(0),))

    def codec_stats(self) -> list[OffloadStats]:
        """No offload codecs: always empty."""
        return []

    def close(self) -> None:
        """Waiters raise TunClosed; packets not drained yet count as dropped ("closed").
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.held:
            count(self._counters.tx_drops, "closed", len(self.held))
            self.held.clear()
        for event in (self._readable, self._room):
            if event is not None:
                event.set()
