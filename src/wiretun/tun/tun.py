"""Tun: a multi-queue TUN device with batched asyncio and blocking I/O, flow-affine writers,
bounded channels, backpressure, statistics and foreign-queue detection."""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Sequence

from wiretun.packet import PROTO_TCP, PROTO_UDP, flow_hash
from wiretun.tun.base import TunBase, check_packets
from wiretun.tun.codec import Codec, CodecFactory, IdentityCodec, OffloadFeatures
from wiretun.tun.codec import offload_codec_factory as _offload_codec_factory
from wiretun.tun.device import (
    LinkProbe,
    ensure_tun_node,
    open_queue,
    set_mtu,
    set_offload,
    validate_name,
)
from wiretun.tun.errors import QueueFull, TunBusy, TunClosed, TunError
from wiretun.tun.queue import Inbound, TunQueue, Wakeup
from wiretun.tun.stats import count

log = logging.getLogger(__name__)

MAX_QUEUES = 256  # the kernel's MAX_TAP_QUEUES
DEFAULT_MAX_BATCH = 100
DEFAULT_INBOUND_CAPACITY = 4096
DEFAULT_OUTBOUND_CAPACITY = 4096
CLOSE_TIMEOUT = 0.9


def open_device(
    name: str,
    *,
    queues: int,
    mtu: int | None,
    offload: bool,
    verify_checksums: bool,
    frames: bool = False,
) -> tuple[list[int], list[Codec] | None, LinkProbe]:
    """Create TUN device `name` exclusively with `queues` non-blocking queue fds: the fds,
    one codec per fd (None without offload) and a link probe; nothing is left on failure."""
    validate_name(name)
    if not 1 <= queues <= MAX_QUEUES:
        raise ValueError(f"queues must be within 1..{MAX_QUEUES}, not {queues}")
    if mtu is not None and not 68 <= mtu <= 65535:
        raise ValueError(f"mtu must be within 68..65535, not {mtu}")
    factory: CodecFactory | None = _offload_codec_factory() if offload else None
    ensure_tun_node()
    fds: list[int] = []
    probe: LinkProbe | None = None
    try:
        for i in range(queues):
            # One queue: no IFF_MULTI_QUEUE, so the kernel refuses foreign attaches outright;
            # with more, a foreign queue is detected and reported (foreign_queues).
            fds.append(open_queue(name, exclusive=i == 0, vnet_hdr=offload, multi_queue=queues > 1))
        codecs: list[Codec] | None = None
        if factory is not None:
            # Offload features belong to the device: one ioctl on any queue sets them.
            features = OffloadFeatures(set_offload(fds[0]), verify_checksums, frames)
            codecs = [factory(features) for _ in fds]
        if mtu is not None:
            set_mtu(name, mtu)
        probe = LinkProbe(name)
    except BaseException:
        for fd in fds:
            os.close(fd)
        if probe is not None:
            probe.close()
        raise
    return fds, codecs, probe


def split_by_flow(packets: Sequence[bytes], n: int, offset: int = 0) -> list[list[bytes]]:
    """`packets` grouped by queue `flow_hash(packet) % n`, each group in the original order
    (so a flow always goes to the same queue fd and never races itself). With `offset`
    (frames: the packet after a virtio_net_hdr) the packet at that offset is hashed."""
    groups: list[list[bytes]] = [[] for _ in range(n)]
    o = offset
    for p in packets:
        # flow_hash's key for plain IPv4 TCP/UDP (protocol, addresses, ports) built in one
        # expression: equal hashes as before, at a fraction of the per-packet cost.
        if (
            type(p) is bytes
            and len(p) >= o + 24
            and p[o] == 0x45
            and (p[o + 9] == PROTO_TCP or p[o + 9] == PROTO_UDP)
            and not (p[o + 6] & 0x3F or p[o + 7])
        ):
            groups[hash(p[o + 9 : o + 10] + p[o + 12 : o + 24]) % n].append(p)
        else:
            groups[flow_hash(p[o:] if o else p) % n].append(p)
    return groups


def queue_of(packet: bytes, n: int, offset: int = 0) -> int:
    """The queue `split_by_flow` gives `packet` (for single sends)."""
    if n == 1:
        return 0
    return flow_hash(packet[offset:] if offset else packet) % n


class Tun(TunBase):
    """A TUN device opened once per queue (IFF_MULTI_QUEUE), each queue fd served by its own
    reader and writer thread.

    Inbound packets of all queues meet in one bounded channel, in arrival order. Outbound
    packets go to writer `flow_hash(packet) % queues`, so a flow never races itself; all
    writers share one budget of `outbound_capacity` queued packets, and `send` raises
    QueueFull exactly when `send_ready()` would wait.

    Inbound order per flow rests on the kernel: its automq steers a flow to the queue that
    last wrote that flow (symmetric hash), so the first reply we write may move a flow to
    another queue, and packets still queued on the old one can be overtaken once. After that
    the flow stays put (a TCP flow moves during its handshake, when nothing is in flight).

    queues=1 is the default: on this 2-core machine more queues did not raise packets/s under
    the GIL (writes got slower; see scripts/tun_microbench.py); they can pay off when the
    per-packet work releases the GIL, or on a free-threaded CPython. For queues driven by an
    asyncio loop, `wiretun.tun.inline.InlineTun` avoids the threads' hand-offs (the tunnel
    moved 1.30 -> 1.63 Gbit/s with it at one queue; scripts/perf_threads.py).
    """

    def __init__(
        self,
        name: str,
        fds: Sequence[int],
        *,
        codecs: Sequence[Codec] | None = None,
        probe: LinkProbe | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        inbound_capacity: int = DEFAULT_INBOUND_CAPACITY,
        outbound_capacity: int = DEFAULT_OUTBOUND_CAPACITY,
        monitor_interval: float | None = 1.0,
    ) -> None:
        """Take ownership of ready queue fds; use `Tun.open` (or `Tun.from_fds`) instead."""
        if not fds:
            raise ValueError("a Tun needs at least one queue fd")
        if max_batch < 1 or inbound_capacity < 1 or outbound_capacity < 1:
            raise ValueError("max_batch and capacities must be positive")
        self._init_base(name, probe, codecs)
        self._close_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._inbound = Inbound(inbound_capacity, len(fds))
        self._writable = Wakeup()
        self._out_capacity = outbound_capacity
        self._receiving = False  # a task is in recv_many (one at a time)
        self._queued = 0  # packets accepted by send/send_many; producer-owned
        self._done_seen = 0  # last sum of the writers' `done` counters
        self._probe_lock = threading.Lock()
        prefix = f"tun-{name}"
        self._qs: tuple[TunQueue, ...] = tuple(
            TunQueue(
                i,
                fd,
                inbound=self._inbound,
                close_fd=self._close_fd,
                codec=codecs[i] if codecs is not None else IdentityCodec(),
                max_batch=max_batch,
                on_written=self._writable.fire,
                thread_prefix=prefix,
            )
            for i, fd in enumerate(fds)
        )
        self._inbound.on_space = self._kick_readers
        self._monitor: threading.Thread | None = None
        if probe is not None and monitor_interval is not None:
            self._monitor = threading.Thread(
                target=self._monitor_loop,
                args=(monitor_interval,),
                name=f"{prefix}-mon",
                daemon=True,
            )
        for q in self._qs:
            q.start()
        if self._monitor is not None:
            self._monitor.start()

    # --- construction ---

    @classmethod
    def open(
        cls,
        name: str,
        *,
        queues: int = 1,
        mtu: int | None = None,
        offload: bool = False,
        verify_checksums: bool = True,
        max_batch: int = DEFAULT_MAX_BATCH,
        inbound_capacity: int = DEFAULT_INBOUND_CAPACITY,
        outbound_capacity: int = DEFAULT_OUTBOUND_CAPACITY,
        monitor_interval: float | None = 1.0,
        frames: bool = False,
    ) -> Tun:
        """Create TUN device `name` exclusively (TunExists if it exists) with `queues` queue fds,
        in the calling thread's network namespace; the device goes away at `close()`.

        `monitor_interval` seconds between checks for foreign queues (None: only in stats()).
        With `offload`, packets sent are merged only if their L4 checksums verify, unless
        `verify_checksums=False` says the caller vouches for them (authenticated packets).
        `frames=True` (with offload) hands over whole vnet frames both ways instead: for a
        caller that splits and coalesces itself (wiretun.datapath).
        """
        fds, codecs, probe = open_device(
            name,
            queues=queues,
            mtu=mtu,
            offload=offload,
            verify_checksums=verify_checksums,
            frames=frames,
        )
        return cls(
            name,
            fds,
            codecs=codecs,
            probe=probe,
            max_batch=max_batch,
            inbound_capacity=inbound_capacity,
            outbound_capacity=outbound_capacity,
            monitor_interval=monitor_interval,
        )

    @classmethod
    def from_fds(
        cls,
        fds: Sequence[int],
        *,
        name: str = "fd",
        max_batch: int = DEFAULT_MAX_BATCH,
        inbound_capacity: int = DEFAULT_INBOUND_CAPACITY,
        outbound_capacity: int = DEFAULT_OUTBOUND_CAPACITY,
    ) -> Tun:
        """Serve packet fds opened elsewhere (TUN queues handed over by a privileged helper,
        or SOCK_SEQPACKET sockets in tests); takes ownership and makes them non-blocking."""
        for fd in fds:
            os.set_blocking(fd, False)
        return cls(
            name,
            fds,
            max_batch=max_batch,
            inbound_capacity=inbound_capacity,
            outbound_capacity=outbound_capacity,
            monitor_interval=None,
        )

    # --- receive ---

    def _recv_ready(self) -> bool:
        return self._closed or self._inbound.nonempty() or self._inbound.error is not None

    async def recv_many(self, max: int = DEFAULT_MAX_BATCH) -> list[bytes]:
        """Wait for at least one packet; return up to `max` packets in arrival order.
        Raises TunClosed after close, TunBroken once a queue failed (read error or EOF), and
        TunBusy while another task waits here."""
        if max < 1:
            raise ValueError("max must be positive")
        if self._receiving:
            raise TunBusy(f"TUN {self._name!r}: another task is already waiting in recv_many")
        self._receiving = True
        try:
            while True:
                self._check_open()
                packets = self._inbound.take(max)
                if packets:
                    return packets
                await self._inbound.readable.wait_async(self._recv_ready)
        finally:
            self._receiving = False

    def recv_batch(self, max: int = DEFAULT_MAX_BATCH, timeout: float | None = None) -> list[bytes]:
        """Blocking `recv_many` for code without an event loop; [] when `timeout` passes."""
        if max < 1:
            raise ValueError("max must be positive")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._check_open()
            packets = self._inbound.take(max)
            if packets:
                return packets
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            self._inbound.readable.wait_sync(self._recv_ready, remaining)

    def _kick_readers(self) -> None:
        for q in self._qs:
            q.kick_reader()

    # --- send ---

    def _room(self) -> int:
        room = self._out_capacity - (self._queued - self._done_seen)
        if room > 0:
            return room
        self._done_seen = sum(q.done for q in self._qs)
        return self._out_capacity - (self._queued - self._done_seen)

    def _send_ready(self) -> bool:
        return self._closed or self._room() > 0

    async def send_ready(self) -> None:
        """Return when at least one packet can be queued; TunClosed if closed meanwhile."""
        self._check_open()
        await self._writable.wait_async(self._send_ready)
        self._check_open()

    def send(self, packet: bytes) -> None:
        """Queue one IP packet for its flow's writer; never blocks. QueueFull when there is no
        room (exactly when `send_ready()` would wait); InvalidPacket (a ValueError) for what
        is not an IP packet."""
        if self._closed:
            raise TunClosed(f"TUN {self._name!r} is closed")
        check_packets((packet,), self._offset)
        qs = self._qs
        q = qs[queue_of(packet, len(qs), self._offset)]
        if self._queued - self._done_seen >= self._out_capacity and self._room() <= 0:
            q.counters.refused += 1
            raise QueueFull(f"TUN {self._name!r}: {self._out_capacity} packets already queued")
        self._queued += 1
        q.submit([packet])

    def send_many(self, packets: Sequence[bytes]) -> int:
        """Queue as many of `packets` as fit, in order, one hand-off per writer; return how
        many were queued (the rest count as refused). Never blocks. InvalidPacket (a
        ValueError) if any is not an IP packet: then none is queued."""
        self._check_open()
        check_packets(packets, self._offset)
        qs = self._qs
        n = len(qs)
        room = max(0, self._room())
        accepted = packets[:room] if room < len(packets) else packets
        if n == 1:
            if accepted:
                self._queued += len(accepted)
                qs[0].submit(list(accepted))
            qs[0].counters.refused += len(packets) - len(accepted)
            return len(accepted)
        groups = split_by_flow(accepted, n, self._offset)
        self._queued += len(accepted)
        for q, group in zip(qs, groups, strict=True):
            if group:
                q.submit(group)
        for p in packets[len(accepted) :]:
            qs[queue_of(p, n, self._offset)].counters.refused += 1
        return len(accepted)

    def send_blocking(self, packet: bytes, timeout: float | None = None) -> None:
        """Blocking `send` for code without an event loop; QueueFull if `timeout` passes."""
        self._check_open()
        if not self._writable.wait_sync(self._send_ready, timeout):
            qs = self._qs
            qs[queue_of(packet, len(qs), self._offset)].counters.refused += 1
            raise QueueFull(f"TUN {self._name!r}: no room within {timeout} s")
        self.send(packet)

    # --- device watch ---

    def _check_link(self) -> None:
        if self._probe is None:
            return
        with self._probe_lock:
            if self._closed and self._monitor is not threading.current_thread():
                return
            try:
                info = self._probe.query()
            except TunError as e:
                log.debug("TUN %s: link query failed: %s", self._name, e)
                return
        self._note_link(info)

    def _monitor_loop(self, interval: float) -> None:
        wait = select.poll()
        wait.register(self._close_fd, select.POLLIN)
        while not self._closed:
            self._check_link()
            if wait.poll(int(interval * 1000)):
                return

    # --- close ---

    def close(self) -> None:
        """Stop every thread and close every fd (within about a second, waking blocked readers
        and waiters, which raise TunClosed); the device disappears. Idempotent."""
        if self._closed:
            return
        with self._probe_lock:
            self._closed = True
        deadline = time.monotonic() + CLOSE_TIMEOUT
        for q in self._qs:
            q.closing = True
        os.eventfd_write(self._close_fd, 1)
        self._inbound.readable.fire()
        self._writable.fire()
        stopped = [q.join(deadline) for q in self._qs]
        if self._monitor is not None:
            self._monitor.join(max(0.0, deadline - time.monotonic()))
        for q, lost in zip(self._qs, self._inbound.discard(), strict=True):
            if lost:
                count(q.counters.rx_drops, "closed", lost)
        for q, ok in zip(self._qs, stopped, strict=True):
            q.release(ok)
        if self._probe is not None:
            self._probe.close()
        if all(stopped) and (self._monitor is None or not self._monitor.is_alive()):
            os.close(self._close_fd)
