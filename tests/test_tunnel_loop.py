"""Tests for wiretun.tunnel.loop with in-memory TUNs (wiretun.testing.memorytun) and a toy
core over real loopback UDP."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from wiretun.testing.memorytun import MemoryTun
from wiretun.testing.wgpair import ipv4_packet
from wiretun.tunnel.loop import HANDSHAKES_PER_TURN, TunnelLoop
from wiretun.tunnel.udp import Datagram, UdpBind
from wiretun.wireguard.events import Endpoint, Event, KeysZeroed


def ip(payload: bytes) -> bytes:
    """An IPv4 packet carrying `payload`: a TUN takes IP packets only (InvalidPacket)."""
    return ipv4_packet("10.0.0.1", "10.0.0.2", payload)


class ToyCore:
    """Not WireGuard: 'seals' a packet by prefixing b"T" and sends everything to one peer;
    a timer fires `keepalives` times, each sending b"K". A datagram b"H..." is a
    'handshake': queued, and answered with b"R..." by `process_handshakes`."""

    def __init__(self, peer: Endpoint, *, keepalives: int = 0, period: float = 0.02) -> None:
        self.peer = peer
        self.out: list[bytes] = []
        self.received_keepalives = 0
        self.garbage = 0
        self.keepalives = keepalives
        self.period = period
        self._next: float | None = None
        self.raise_on: bytes | None = None
        self.events: list[Event] = []
        self.handshakes: list[bytes] = []
        self.handshake_calls: list[int] = []  # how many each process_handshakes call took
        self.answered: list[bytes] = []

    def send_packets(self, packets: Sequence[bytes], now: float) -> None:
        self.out.extend(b"T" + p for p in packets)

    def receive_datagrams(
        self, datagrams: Sequence[tuple[Datagram, Endpoint]], now: float
    ) -> list[bytes]:
        packets = []
        for view, _ in datagrams:
            d = bytes(view)  # GRO receives hand out memoryviews
            if d == self.raise_on:
                raise RuntimeError("core bug")
            if d == b"K":
                self.received_keepalives += 1
                self.events.append(KeysZeroed(b"k" * 32))  # any event: the loop counts kinds
            elif d.startswith(b"T"):
                packets.append(d[1:])
            elif d.startswith(b"H"):
                self.handshakes.append(d)
            elif d.startswith(b"R"):
                self.answered.append(d)
            else:
                self.garbage += 1
        return packets

    def datagrams_to_send(self) -> list[tuple[Endpoint, list[bytes]]]:
        out, self.out = self.out, []
        return [(self.peer, out)] if out else []

    def handle_timers(self, now: float) -> None:
        if self._next is not None and now >= self._next:
            self.keepalives -= 1
            self.out.append(b"K")
            self._next = None

    @property
    def handshakes_waiting(self) -> int:
        return len(self.handshakes)

    def process_handshakes(self, now: float, limit: int | None = None) -> int:
        take = len(self.handshakes) if limit is None else limit
        done, self.handshakes = self.handshakes[:take], self.handshakes[take:]
        self.handshake_calls.append(len(done))
        self.out.extend(b"R" + d[1:] for d in done)
        return len(self.handshakes)

    def next_event(self) -> Event | None:
        return self.events.pop(0) if self.events else None

    def next_timer(self) -> float | None:
        if self._next is None and self.keepalives > 0:
            self._next = asyncio.get_running_loop().time() + self.period
        return self._next


async def _until(cond: object, timeout: float = 5.0) -> None:
    assert callable(cond)
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


def _pair(
    cap_b: int = 10_000, keepalives: int = 0
) -> tuple[MemoryTun, MemoryTun, ToyCore, ToyCore, UdpBind, UdpBind]:
    ua = UdpBind.open(host4="127.0.0.1", host6=None)
    ub = UdpBind.open(host4="127.0.0.1", host6=None)
    ca = ToyCore(("127.0.0.1", ub.port), keepalives=keepalives)
    cb = ToyCore(("127.0.0.1", ua.port))
    return MemoryTun("ta"), MemoryTun("tb", capacity=cap_b), ca, cb, ua, ub


def test_packets_cross_both_ways_in_order() -> None:
    async def main() -> None:
        ta, tb, ca, cb, ua, ub = _pair()
        la, lb = TunnelLoop(ta, ca, ua), TunnelLoop(tb, cb, ub)
        runs = [asyncio.create_task(la.run()), asyncio.create_task(lb.run())]
        try:
            forward = [ip(bytes([i % 256]) * (100 + i % 3)) for i in range(1000)]
            for i in range(0, len(forward), 50):
                ta.inject(forward[i : i + 50])
            back = [ip(b"reply %d" % i) for i in range(300)]
            tb.inject(back)

            def arrived() -> bool:
                tb.drain()
                ta.drain()
                return len(tb.delivered) == len(forward) and len(ta.delivered) == len(back)

            await _until(arrived)
            assert tb.delivered == forward
            assert ta.delivered == back
            sa, sb = la.stats(), lb.stats()
            assert sa.packets_from_tun == 1000 and sa.datagrams_out == 1000
            assert sb.datagrams_in == 1000 and sb.packets_to_tun == 1000
            assert sa.tun_batches >= 1000 // 128
            assert ua.stats().gso_sends > 0  # equal-size runs went out GSO-grouped
            assert cb.garbage == 0
        finally:
            la.stop()
            lb.stop()
            await asyncio.gather(*runs)
            ua.close()
            ub.close()

    asyncio.run(main())


def test_full_tun_stops_udp_reads_until_it_drains() -> None:
    async def main() -> None:
        ta, tb, ca, cb, ua, ub = _pair(cap_b=50)
        la, lb = TunnelLoop(ta, ca, ua, batch=32), TunnelLoop(tb, cb, ub, batch=32)
        runs = [asyncio.create_task(la.run()), asyncio.create_task(lb.run())]
        try:
            packets = [ip(b"p%04d" % i) for i in range(500)]
            ta.inject(packets)
            await _until(lambda: len(tb.held) >= 50)
            await asyncio.sleep(0.1)
            # The TUN took 50: all of the first batch of 32 and 18 of the second, whose
            # other 14 wait in the loop; the rest stays in the socket buffer.
            assert len(tb.held) == 50
            assert lb.stats().datagrams_in == 64
            assert lb.stats().udp_reads_paused == 1
            assert tb.waited_for_room >= 1

            def drained() -> bool:
                tb.drain()
                return len(tb.delivered) == 500

            await _until(drained)
            assert tb.delivered == packets  # nothing dropped, order kept
            assert ub.stats().drops == {}
        finally:
            la.stop()
            lb.stop()
            await asyncio.gather(*runs)
            ua.close()
            ub.close()

    asyncio.run(main())


def test_udp_backlog_stops_tun_reads() -> None:
    async def main() -> None:
        ta, tb, ca, cb, ua, ub = _pair()
        la, lb = TunnelLoop(ta, ca, ua), TunnelLoop(tb, cb, ub)
        try:
            ua.attach(asyncio.get_running_loop(), lambda: None, lambda: None)
            # A backlog as if the socket had said EAGAIN: the reader must wait for it.
            sock = ua._socks[next(iter(ua._socks))]
            sock.pending.append((("127.0.0.1", ub.port), [b"T" + ip(b"queued")]))
            sock.pending_count = 1
            assert ua.backlogged
            runs = [asyncio.create_task(la.run()), asyncio.create_task(lb.run())]
            ta.inject([ip(b"after")])
            await asyncio.sleep(0.05)
            assert la.stats().packets_from_tun == 0
            assert la.stats().tun_reads_paused == 1
            ua.flush()  # socket writable: the backlog drains and reading resumes

            def arrived() -> bool:
                tb.drain()
                return len(tb.delivered) == 2

            await _until(arrived)
            assert tb.delivered == [ip(b"queued"), ip(b"after")]
        finally:
            la.stop()
            lb.stop()
            await asyncio.gather(*runs)
            ua.close()
            ub.close()

    asyncio.run(main())


def test_timer_is_rearmed_and_drives_the_core() -> None:
    async def main() -> None:
        ta, tb, ca, cb, ua, ub = _pair(keepalives=3)
        la, lb = TunnelLoop(ta, ca, ua), TunnelLoop(tb, cb, ub)
        runs = [asyncio.create_task(la.run()), asyncio.create_task(lb.run())]
        try:
            await _until(lambda: cb.received_keepalives == 3)
            assert la.stats().timer_runs == 3
            # The receiving loop pulled the core's events as they came.
            await _until(lambda: lb.stats().events == {"KeysZeroed": 3})
            assert cb.events == []
            await asyncio.sleep(0.1)
            assert cb.received_keepalives == 3  # no timer once the core has none
        finally:
            la.stop()
            lb.stop()
            await asyncio.gather(*runs)
            ua.close()
            ub.close()

    asyncio.run(main())


def test_a_deadline_a_batch_brings_forward_is_armed_at_once() -> None:
    # No re-arm throttle: the second of two batches 10 ms apart moves the core's deadline
    # from +100 s to +20 ms, and nothing else happens; the timer must still fire then.
    class SoonAfterSecondBatch(ToyCore):
        batches = 0

        def send_packets(self, packets: Sequence[bytes], now: float) -> None:
            super().send_packets(packets, now)
            self.batches += 1
            self._next = now + (0.02 if self.batches == 2 else 100.0)

        def next_timer(self) -> float | None:
            return self._next

        def handle_timers(self, now: float) -> None:
            if self._next is not None and now >= self._next:
                self._next = None

    async def main() -> None:
        ta, tb, _, cb, ua, ub = _pair()
        ca = SoonAfterSecondBatch(("127.0.0.1", ub.port))
        la, lb = TunnelLoop(ta, ca, ua), TunnelLoop(tb, cb, ub)
        runs = [asyncio.create_task(la.run()), asyncio.create_task(lb.run())]
        try:
            ta.inject([ip(b"one")])
            await _until(lambda: ca.batches == 1)
            await asyncio.sleep(0.01)
            ta.inject([ip(b"two")])
            await _until(lambda: la.stats().timer_runs >= 1, timeout=2.0)
        finally:
            la.stop()
            lb.stop()
            await asyncio.gather(*runs)
            ua.close()
            ub.close()

    asyncio.run(main())


def test_handshakes_are_handled_in_capped_turns_apart_from_data() -> None:
    async def main() -> None:
        ta, tb, ca, cb, ua, ub = _pair()
        la, lb = TunnelLoop(ta, ca, ua), TunnelLoop(tb, cb, ub)
        runs = [asyncio.create_task(la.run()), asyncio.create_task(lb.run())]
        try:
            flood = [b"H%03d" % i for i in range(100)]
            ca.out.extend(flood)  # straight onto the wire, as a flooder would
            ta.inject([ip(b"data")])
            la.kick()

            def answered() -> bool:
                tb.drain()
                return len(ca.answered) == len(flood) and tb.delivered == [ip(b"data")]

            await _until(answered)
            assert ca.answered == [b"R" + h[1:] for h in flood]  # in order, every one
            calls = [n for n in cb.handshake_calls if n]
            assert max(calls) <= HANDSHAKES_PER_TURN and sum(calls) == len(flood)
            assert lb.stats().handshake_turns >= len(flood) // HANDSHAKES_PER_TURN
        finally:
            la.stop()
            lb.stop()
            await asyncio.gather(*runs)
            ua.close()
            ub.close()

    asyncio.run(main())


def test_a_core_bug_is_logged_and_ends_the_loop_with_its_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        ta, tb, ca, cb, ua, ub = _pair()
        cb.raise_on = b"T" + ip(b"boom")
        la, lb = TunnelLoop(ta, ca, ua), TunnelLoop(tb, cb, ub)
        run_a = asyncio.create_task(la.run())
        try:
            ta.inject([ip(b"boom")])
            with pytest.raises(RuntimeError, match="core bug"):
                await asyncio.wait_for(lb.run(), 5)
            assert lb.stats().drops == {"core_receive_error": 1}
        finally:
            la.stop()
            await run_a
            ua.close()
            ub.close()

    asyncio.run(main())
    assert "bug in the WireGuard core (core_receive): the tunnel stops" in caplog.text


def test_a_core_bug_in_a_timer_ends_the_loop_too() -> None:
    class TimerBug(ToyCore):
        def handle_timers(self, now: float) -> None:
            raise KeyError("timer bug")

    async def main() -> None:
        ua = UdpBind.open(host4="127.0.0.1", host6=None)
        try:
            loop = TunnelLoop(MemoryTun(), TimerBug(("127.0.0.1", 9), keepalives=1), ua)
            with pytest.raises(KeyError, match="timer bug"):
                await asyncio.wait_for(loop.run(), 5)
        finally:
            ua.close()

    asyncio.run(main())


def test_failing_tun_ends_run_with_its_error() -> None:
    class BrokenTun(MemoryTun):
        async def recv_many(self, max: int = 100) -> list[bytes]:
            raise OSError(19, "No such device")

    async def main() -> None:
        ua = UdpBind.open(host4="127.0.0.1", host6=None)
        try:
            loop = TunnelLoop(BrokenTun(), ToyCore(("127.0.0.1", 9)), ua)
            try:
                await asyncio.wait_for(loop.run(), 5)
            except OSError as e:
                assert e.errno == 19
            else:
                raise AssertionError("run() returned despite a dead TUN")
        finally:
            ua.close()

    asyncio.run(main())


def test_datagrams_queued_before_run_are_sent_at_start() -> None:
    async def main() -> None:
        ta, tb, ca, cb, ua, ub = _pair()
        ca.out.append(b"K")  # e.g. an initiation the configuration queued; no timer due
        la, lb = TunnelLoop(ta, ca, ua), TunnelLoop(tb, cb, ub)
        runs = [asyncio.create_task(la.run()), asyncio.create_task(lb.run())]
        try:
            await _until(lambda: cb.received_keepalives == 1, timeout=2.0)
            assert la.stats().timer_runs == 0
        finally:
            la.stop()
            lb.stop()
            await asyncio.gather(*runs)
            ua.close()
            ub.close()

    asyncio.run(main())


class _WatchedBind(UdpBind):
    """Records, when closed, whether the task given in `watch` had already finished."""

    watch: asyncio.Task[None] | None = None
    watch_done_at_close: bool | None = None

    def close(self) -> None:
        if self.watch is not None and self.watch_done_at_close is None:
            self.watch_done_at_close = self.watch.done()
        super().close()


def test_replace_udp_closes_old_sockets_only_after_the_old_reader_let_go() -> None:
    async def main() -> None:
        ta, tb, ca, cb, unused, ub = _pair()
        unused.close()
        ua = _WatchedBind.open(host4="127.0.0.1", host6=None)
        assert isinstance(ua, _WatchedBind)
        la, lb = TunnelLoop(ta, ca, ua), TunnelLoop(tb, cb, ub)
        runs = [asyncio.create_task(la.run()), asyncio.create_task(lb.run())]
        new = UdpBind.open(host4="127.0.0.1", host6=None)
        try:
            await asyncio.sleep(0.05)  # the UDP reader is parked on ua's fds
            ua.watch = next(t for t in la._tasks if t.get_name() == "udp->tun")
            la.replace_udp(new)
            cb.peer = ("127.0.0.1", new.port)
            await _until(lambda: ua.watch_done_at_close is not None)
            assert ua.watch_done_at_close is True
            # Both directions still work over the new sockets.
            tb.inject([ip(b"to-a")])
            ta.inject([ip(b"to-b")])

            def arrived() -> bool:
                ta.drain()
                tb.drain()
                return ta.delivered == [ip(b"to-a")] and tb.delivered == [ip(b"to-b")]

            await _until(arrived)
        finally:
            la.stop()
            lb.stop()
            await asyncio.gather(*runs)
            new.close()
            ua.close()
            ub.close()

    asyncio.run(main())
