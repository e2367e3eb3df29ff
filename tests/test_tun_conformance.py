"""The TunDevice contract (wiretun.tun.port), one set of tests run against every TUN class:
`Tun` (reader/writer threads) and `InlineTun` (the asyncio loop), over SOCK_SEQPACKET
socketpairs standing in for the queue fds (no root needed), and the in-memory
`wiretun.testing.memorytun.MemoryTun` that tests run the tunnel loop on (all but the
kernel hanging up, which it has no fd for)."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable, Iterator

import pytest

from wiretun.testing.memorytun import MemoryTun
from wiretun.tun import InlineTun, InvalidPacket, Tun, TunBroken, TunBusy, TunClosed, TunDevice


def udp4(seq: int, size: int = 40) -> bytes:
    payload = struct.pack("!I", seq) + bytes(size)
    udp = struct.pack("!HHHH", 4000, 9, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))  # fmt: skip
    return ip + udp


def udp6(seq: int) -> bytes:
    payload = struct.pack("!I", seq)
    udp = struct.pack("!HHHH", 4000, 9, 8 + len(payload), 0) + payload
    return struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64, bytes(15) + b"\1",
                       bytes(15) + b"\2") + udp  # fmt: skip


class Kit:
    """A TUN under test and the kernel's side of its one queue: `inject` is the kernel
    handing us a packet, `sent()` the next packet the kernel read from us."""

    tun: TunDevice

    def inject(self, packet: bytes) -> None:
        raise NotImplementedError

    def sent(self) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        self.tun.close()


class FdKit(Kit):
    def __init__(self, make: Callable[[list[int]], TunDevice]) -> None:
        ours, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.peer.settimeout(5)
        ours.setblocking(False)
        self.tun = make([ours.detach()])

    def inject(self, packet: bytes) -> None:
        self.peer.send(packet)

    def sent(self) -> bytes:
        return self.peer.recv(65535)

    def close(self) -> None:
        super().close()
        self.peer.close()


class MemoryKit(Kit):
    def __init__(self) -> None:
        self.mem = self.tun = MemoryTun("conf")

    def inject(self, packet: bytes) -> None:
        self.mem.inject([packet])

    def sent(self) -> bytes:
        self.mem.drain()
        return self.mem.delivered.pop(0)


KITS: dict[str, Callable[[], Kit]] = {
    "Tun": lambda: FdKit(lambda fds: Tun.from_fds(fds, name="conf")),
    "InlineTun": lambda: FdKit(lambda fds: InlineTun("conf", fds)),
    "MemoryTun": MemoryKit,
}


def _kit(request: pytest.FixtureRequest) -> Iterator[Kit]:
    kit = KITS[request.param]()
    try:
        yield kit
    finally:
        kit.close()


@pytest.fixture(params=sorted(KITS))
def kit(request: pytest.FixtureRequest) -> Iterator[Kit]:
    yield from _kit(request)


@pytest.fixture(params=["InlineTun", "Tun"])
def fd_kit(request: pytest.FixtureRequest) -> Iterator[FdKit]:
    for kit in _kit(request):
        assert isinstance(kit, FdKit)
        yield kit


def test_identity(kit: Kit) -> None:
    assert kit.tun.name == "conf"
    assert kit.tun.queues == 1
    assert kit.tun.uso is False
    assert kit.tun.closed is False


def test_recv_many_waits_then_gives_at_most_max_in_order(kit: Kit) -> None:
    packets = [udp4(i) for i in range(7)]

    async def main() -> list[list[bytes]]:
        waiter = asyncio.create_task(kit.tun.recv_many(3))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # nothing arrived yet: it waits
        for p in packets:
            kit.inject(p)
        batches = [await waiter]
        got = len(batches[0])
        while got < len(packets):
            batch = await asyncio.wait_for(kit.tun.recv_many(3), 5)
            batches.append(batch)
            got += len(batch)
        return batches

    batches = asyncio.run(main())
    assert all(1 <= len(b) <= 3 for b in batches)
    assert [p for b in batches for p in b] == packets


def test_a_second_waiting_receiver_is_told_busy_and_the_first_keeps_its_packets(
    kit: Kit,
) -> None:
    async def main() -> list[bytes]:
        first = asyncio.create_task(kit.tun.recv_many(10))
        await asyncio.sleep(0.02)
        with pytest.raises(TunBusy, match="already waiting"):
            await kit.tun.recv_many(10)
        kit.inject(udp4(1))
        return await asyncio.wait_for(first, 5)

    assert asyncio.run(main()) == [udp4(1)]


def test_receivers_one_after_the_other_are_fine(kit: Kit) -> None:
    async def main() -> list[bytes]:
        kit.inject(udp4(1))
        a = await asyncio.wait_for(kit.tun.recv_many(10), 5)
        kit.inject(udp4(2))
        b = await asyncio.wait_for(kit.tun.recv_many(10), 5)
        return a + b

    assert asyncio.run(main()) == [udp4(1), udp4(2)]


def test_send_and_send_many_deliver_in_order(kit: Kit) -> None:
    batch = [udp4(i) for i in range(5)] + [udp6(9)]

    async def main() -> int:
        await kit.tun.send_ready()
        kit.tun.send(udp4(100))
        return kit.tun.send_many(batch)

    assert asyncio.run(main()) == len(batch)
    assert [kit.sent() for _ in range(len(batch) + 1)] == [udp4(100), *batch]


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (b"not ip", "not IPv4 or IPv6"),
        ("a string", "not str"),
        (bytearray(b"\x45"), "not IPv4 or IPv6"),
        (udp4(1)[:-1], "says its length is"),
        (udp4(1) + bytes(70_000), "over the IP maximum"),
        (42, "not int"),
    ],
)
def test_what_is_not_an_ip_packet_is_a_value_error_and_nothing_is_sent(
    kit: Kit, bad: object, match: str
) -> None:
    async def main() -> None:
        with pytest.raises(InvalidPacket, match=match):
            kit.tun.send(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=match):
            kit.tun.send_many([udp4(1), bad])  # type: ignore[list-item]
        kit.tun.send(udp4(2))

    asyncio.run(main())
    assert kit.sent() == udp4(2)  # the good packet of the refused batch never went


def test_bytes_like_packets_are_taken(kit: Kit) -> None:
    async def main() -> int:
        return kit.tun.send_many([bytearray(udp4(1)), memoryview(udp4(2))])  # type: ignore[list-item]

    assert asyncio.run(main()) == 2
    assert [kit.sent() for _ in range(2)] == [udp4(1), udp4(2)]


def test_eof_from_the_kernel_side_is_tun_broken(fd_kit: FdKit) -> None:
    async def main() -> None:
        fd_kit.peer.close()
        with pytest.raises(TunBroken):
            await asyncio.wait_for(fd_kit.tun.recv_many(10), 5)

    asyncio.run(main())


def test_close_wakes_the_receiver_with_tun_closed_and_is_idempotent(kit: Kit) -> None:
    async def main() -> None:
        waiter = asyncio.create_task(kit.tun.recv_many(10))
        await asyncio.sleep(0.02)
        kit.tun.close()
        with pytest.raises(TunClosed):
            await asyncio.wait_for(waiter, 5)
        kit.tun.close()
        assert kit.tun.closed
        with pytest.raises(TunClosed):
            kit.tun.send(udp4(1))
        with pytest.raises(TunClosed):
            await kit.tun.send_ready()

    asyncio.run(main())


def test_stats_are_a_snapshot(kit: Kit) -> None:
    async def main() -> None:
        kit.inject(udp4(1))
        await asyncio.wait_for(kit.tun.recv_many(10), 5)

    before = kit.tun.stats()
    asyncio.run(main())
    after = kit.tun.stats()
    assert before.total.rx_packets == 0
    assert after.total.rx_packets == 1
    assert after.name == "conf"
    with pytest.raises(AttributeError):
        after.name = "x"  # type: ignore[misc]
