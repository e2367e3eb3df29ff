"""The tunnel's event loop: TUN batches <-> WireGuard core <-> UDP batches, with backpressure."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from wiretun.tunnel.udp import Datagram, UdpBind
from wiretun.wireguard.events import Endpoint

if TYPE_CHECKING:
    from wiretun.datapath import CoalescerLike
    from wiretun.wireguard.events import Event

_T = TypeVar("_T")

log = logging.getLogger(__name__)

# Packets per TUN read and datagrams per UDP drain: wireguard-go's IdealBatchSize.
BATCH = 128
# Queued handshake messages the core handles per loop turn (Device.process_handshakes): at
# worst 8 cookie replies (~0.15 ms) or DH operations (~1-2.5 ms) between two data batches.
# Under a 40k/s valid-mac1 flood (scripts/flood_bench.py) 16 left TCP ~0.3 of quiet, 8 ~0.6.
HANDSHAKES_PER_TURN = 8


class TunPort(Protocol):
    """What the loop needs from a TUN (wiretun.tun.TunDevice: Tun or InlineTun)."""

    async def recv_many(self, max: int, /) -> list[bytes]: ...
    async def send_ready(self) -> None: ...
    def send_many(self, packets: Sequence[bytes], /) -> int: ...


class CorePort(Protocol):
    """What the loop needs from the sans-I/O core (wiretun.wireguard.Device)."""

    def send_packets(self, packets: Sequence[bytes], now: float) -> None: ...
    def receive_datagrams(
        self, datagrams: Sequence[tuple[Datagram, Endpoint]], now: float
    ) -> list[bytes]: ...
    def datagrams_to_send(self) -> list[tuple[Endpoint, list[bytes]]]: ...
    def handle_timers(self, now: float) -> None: ...
    def next_timer(self) -> float | None: ...
    def next_event(self) -> Event | None: ...
    @property
    def handshakes_waiting(self) -> int: ...
    def process_handshakes(self, now: float, limit: int | None = None) -> int: ...


class BatchCorePort(CorePort, Protocol):
    """The core's batch entry points (wiretun.wireguard.Device with a data path)."""

    def send_frames(self, frames: Sequence[bytes], now: float, *, vnet: bool) -> None: ...
    def receive_gro(
        self,
        buffers: Sequence[tuple[Datagram, int, Endpoint]],
        now: float,
        frames: CoalescerLike,
    ) -> None: ...
    def gso_to_send(self) -> list[tuple[Endpoint, bytes, list[tuple[int, int]]]]: ...


@dataclass(frozen=True, slots=True)
class FramePath:
    """Run the data path in batches (wiretun.datapath): the TUN hands over and takes whole
    frames (`vnet`: with virtio_net_hdr), the core splits, seals, opens and coalesces."""

    vnet: bool
    coalescer: CoalescerLike  # where receive_gro puts packets; finish() gives TUN frames


@dataclass(frozen=True, slots=True)
class LoopStats:
    """A snapshot of the loop's counters (the core, TUN and UDP keep their own)."""

    packets_from_tun: int
    packets_to_tun: int
    datagrams_in: int
    datagrams_out: int
    tun_batches: int
    udp_batches: int
    timer_runs: int
    handshake_turns: int  # loop turns that handled queued handshake messages
    tun_reads_paused: int  # times the TUN reader waited for a UDP backlog to drain
    udp_reads_paused: int  # times a decrypted batch waited for room in the TUN
    drops: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)


class TunnelLoop:
    """Runs the data path until `stop()` or until a side fails (the error is re-raised).

    Two tasks move batches: TUN -> core -> UDP and UDP -> core -> TUN. Each waits before
    reading for the side it writes to: the TUN reader while UDP has a backlog, the UDP
    reader until the TUN says `send_ready`. One timer handle follows `core.next_timer()`.
    Handshake messages a UDP batch queued in the core are handled apart from the data, at
    most HANDSHAKES_PER_TURN per event-loop turn (a callback that re-schedules itself while
    any wait), so a handshake flood cannot hold back the data of either direction.
    """

    def __init__(
        self,
        tun: TunPort,
        core: CorePort,
        udp: UdpBind,
        *,
        batch: int = BATCH,
        on_event: Callable[[Event], None] | None = None,
        frames: FramePath | None = None,
    ) -> None:
        self.tun = tun
        self.core = core
        self.udp = udp
        self.frames = frames
        # With a FramePath the core must offer the batch entry points.
        self._batch_core = cast(BatchCorePort, core) if frames is not None else None
        # What a TUN batch goes to: the batch path's frames, or the per-packet path.
        self._send: Callable[[Sequence[bytes], float], None] = (
            partial(self._batch_core.send_frames, vnet=frames.vnet)
            if self._batch_core is not None and frames is not None
            else core.send_packets
        )
        self.batch = batch
        self._on_event = on_event
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._handshake_turn: asyncio.Handle | None = None
        self._udp_drained = asyncio.Event()
        self._udp_drained.set()
        self._stopped: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._retiring: list[asyncio.Task[None]] = []  # closing sockets replace_udp retired
        self._n = Counter[str]()
        self.drops = Counter[str]()
        self.events = Counter[str]()

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Move packets until stopped; a failing side's exception ends the loop and is raised."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopped = loop.create_future()
        self.udp.attach(loop, lambda: None, self._on_udp_drained)
        # Configuration before the loop existed (a persistent keepalive's initiation) may
        # have queued datagrams already: send them now, not at the first timer.
        self._flush_core()
        self._tasks = [
            loop.create_task(self._tun_to_udp(), name="tun->udp"),
            loop.create_task(self._udp_to_tun(), name="udp->tun"),
        ]
        self._rearm_timer()
        try:
            while True:
                done, _ = await asyncio.wait(
                    [*self._tasks, self._stopped], return_when=asyncio.FIRST_COMPLETED
                )
                if self._stopped in done:
                    self._stopped.result()  # a core bug outside the tasks: raise it
                    return
                for t in done:
                    if t in self._tasks:
                        t.result()  # re-raise the side's failure
                        raise RuntimeError(f"{t.get_name()} ended")
                # Only a task that replace_udp() retired finished: keep waiting.
        finally:
            await self._shutdown()

    def stop(self) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    async def _shutdown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._handshake_turn is not None:
            self._handshake_turn.cancel()
            self._handshake_turn = None
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        for t in self._retiring:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._retiring = []

    def replace_udp(self, udp: UdpBind) -> None:
        """Switch to new sockets (UAPI listen_port change); the loop closes the old ones.

        The old reader may be parked on the old fds (add_reader): they are closed only after
        that task has finished unwinding, or a reused fd number could lose its reader.
        """
        old, self.udp = self.udp, udp
        loop = self._loop
        if loop is None:
            old.close()
            return
        old.pause_reading()
        udp.attach(loop, lambda: None, self._on_udp_drained)
        self._udp_drained.set()
        retired: list[asyncio.Task[None]] = []
        for i, t in enumerate(self._tasks):
            if t.get_name() == "udp->tun":
                t.cancel()
                retired.append(t)
                self._tasks[i] = loop.create_task(self._udp_to_tun(), name="udp->tun")
        self._retiring = [t for t in self._retiring if not t.done()]
        self._retiring.append(loop.create_task(self._close_after(retired, old)))

    async def _close_after(self, tasks: list[asyncio.Task[None]], old: UdpBind) -> None:
        try:
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        finally:
            old.close()

    def kick(self) -> None:
        """Something changed the core from outside (UAPI set): send what it queued, re-arm."""
        self._flush_core()
        self._rearm_timer()

    # -- data path --------------------------------------------------------------------------

    async def _tun_to_udp(self) -> None:
        tun, loop = self.tun, self._loop
        what = "core_send_frames" if self._batch_core is not None else "core_send_packets"
        assert loop is not None
        while True:
            if self.udp.backlogged:
                # Backpressure: leave packets in the TUN queues until UDP can take more.
                self._n["tun_reads_paused"] += 1
                self._udp_drained.clear()
                await self._udp_drained.wait()
            packets = await tun.recv_many(self.batch)
            if not packets:
                continue
            self._n["packets_from_tun"] += len(packets)
            self._n["tun_batches"] += 1
            now = loop.time()
            self._guard(what, self._send, packets, now)
            self._flush_core()
            self._rearm_timer()

    async def _udp_to_tun(self) -> None:
        tun, core, udp, loop = self.tun, self.core, self.udp, self._loop
        assert loop is not None
        busy = False  # a batch was handled since the last suspension
        while True:
            # Backpressure: while the TUN is full, datagrams wait in the socket buffer.
            await tun.send_ready()
            if busy:
                # Receiving never suspends: yield between batches so the other direction and
                # timers run. When the last receive found the sockets empty, the wait is the
                # yield (and an idle packet costs no receive that finds nothing).
                busy = False
                if udp.drained:
                    await udp.wait_readable()
                else:
                    await asyncio.sleep(0)
                continue
            now = loop.time()
            if self._batch_core is not None:
                packets = self._receive_frames(now)
                if packets is None:
                    await udp.wait_readable()
                    continue
            else:
                datagrams = udp.recv_batch(self.batch)
                if not datagrams:
                    await udp.wait_readable()
                    continue
                self._n["datagrams_in"] += len(datagrams)
                self._n["udp_batches"] += 1
                packets = self._guard("core_receive", core.receive_datagrams, datagrams, now)
            if packets:
                self._n["packets_to_tun"] += len(packets)
                while True:
                    taken = tun.send_many(packets)
                    if not isinstance(taken, int) or taken >= len(packets):
                        break
                    # The TUN took part of the batch: wait for room instead of dropping.
                    packets = packets[taken:]
                    self._n["udp_reads_paused"] += 1
                    await tun.send_ready()
            # Keepalives and staged packets the datagrams released; handshakes they queued
            # are handled in turns of their own.
            self._flush_core()
            self._rearm_timer()
            if core.handshakes_waiting:
                self._schedule_handshakes()
            busy = True

    def _receive_frames(self, now: float) -> list[bytes] | None:
        """One UDP drain through the batch path: the TUN frames (None: nothing was waiting)."""
        assert self._batch_core is not None and self.frames is not None
        buffers = self.udp.recv_buffers(self.batch)
        if not buffers:
            return None
        self._n["udp_batches"] += 1
        self._n["datagrams_in"] += sum(-(-len(b) // s) for b, s, _ in buffers)
        coalescer = self.frames.coalescer
        self._guard("core_receive_gro", self._batch_core.receive_gro, buffers, now, coalescer)
        # finish() also empties it after a failed call: no packet lingers into the next.
        return coalescer.finish()

    def _flush_core(self) -> None:
        self._drain_events()
        out = self._guard("core_datagrams_to_send", self.core.datagrams_to_send)
        for endpoint, datagrams in out or ():
            self._n["datagrams_out"] += len(datagrams)
            self.udp.send_batch(endpoint, datagrams)
        if self._batch_core is not None:
            gso = self._guard("core_gso_to_send", self._batch_core.gso_to_send)
            for endpoint, buf, groups in gso or ():
                self._n["datagrams_out"] += sum(-(-n // size) for size, n in groups)
                self.udp.send_gso(endpoint, buf, groups)
        if self.udp.backlogged:
            self._udp_drained.clear()

    def _drain_events(self) -> None:
        """Pull the core's events (they queue until pulled); log them, count by kind."""
        next_event = self.core.next_event
        while (event := next_event()) is not None:
            kind = type(event).__name__
            self.events[kind] += 1
            log.info("%s", event)
            if self._on_event is not None:
                self._on_event(event)

    def _on_udp_drained(self) -> None:
        self._udp_drained.set()

    # -- handshakes -------------------------------------------------------------------------

    def _schedule_handshakes(self) -> None:
        if self._handshake_turn is None and self._loop is not None:
            self._handshake_turn = self._loop.call_soon(self._handshakes_turn)

    def _handshakes_turn(self) -> None:
        """One turn's share of the queued handshake messages; again next turn if any wait."""
        assert self._loop is not None
        self._handshake_turn = None
        self._n["handshake_turns"] += 1
        # As in _on_timer: a core bug was logged and handed to run() by _guard.
        with contextlib.suppress(Exception):
            left = self._guard(
                "core_handshakes", self.core.process_handshakes, self._loop.time(),
                HANDSHAKES_PER_TURN,
            )  # fmt: skip
            self._flush_core()  # responses and cookie replies, batched per turn
            self._rearm_timer()
            if left:
                self._schedule_handshakes()

    # -- timers -----------------------------------------------------------------------------

    def _rearm_timer(self) -> None:
        """Follow the core's next deadline (asked after every batch: the core answers from
        a heap). A handle armed for an earlier time is kept: it fires, finds nothing due
        and re-arms, which is cheaper than a new handle per batch while data keeps moving
        the keepalive and handshake deadlines later."""
        loop = self._loop
        if loop is None:
            return
        at = self._guard("core_next_timer", self.core.next_timer)
        armed = self._timer_at
        if self._timer is not None and armed is not None and (at is None or armed <= at):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        assert self._loop is not None
        self._timer = None
        self._timer_at = None
        self._n["timer_runs"] += 1
        # A core bug was logged and handed to run() by _guard; a loop callback has nobody
        # to raise to.
        with contextlib.suppress(Exception):
            self._guard("core_timers", self.core.handle_timers, self._loop.time())
            self._flush_core()
            self._rearm_timer()

    # -- bookkeeping ------------------------------------------------------------------------

    def _guard(self, what: str, fn: Callable[..., _T], *args: Any) -> _T:
        """Call into the core. The core counts garbage from the network as drops and never
        raises for it, so an exception here is a bug: logged, and the tunnel stops with it
        (run() raises it) rather than run on with state the bug may have left half-done."""
        try:
            return fn(*args)
        except Exception as e:
            self.drops[f"{what}_error"] += 1
            log.exception("bug in the WireGuard core (%s): the tunnel stops", what)
            self._fail(e)
            raise

    def _fail(self, error: BaseException) -> None:
        """End run() with `error` (for failures outside its tasks: timers, kick())."""
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_exception(error)

    def stats(self) -> LoopStats:
        n = self._n
        return LoopStats(
            packets_from_tun=n["packets_from_tun"],
            packets_to_tun=n["packets_to_tun"],
            datagrams_in=n["datagrams_in"],
            datagrams_out=n["datagrams_out"],
            tun_batches=n["tun_batches"],
            udp_batches=n["udp_batches"],
            timer_runs=n["timer_runs"],
            handshake_turns=n["handshake_turns"],
            tun_reads_paused=n["tun_reads_paused"],
            udp_reads_paused=n["udp_reads_paused"],
            drops=dict(self.drops),
            events=dict(self.events),
        )
