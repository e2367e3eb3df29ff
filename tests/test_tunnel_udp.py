"""Tests for wiretun.tunnel.udp: GSO grouping, GSO/GRO round trips on loopback, fallbacks."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from typing import Any

import pytest

from wiretun.tunnel import udp
from wiretun.tunnel.udp import UdpBind, gso_groups, split_coalesced
from wiretun.wireguard.events import Endpoint


def _recv_all(bind: UdpBind, want: int, timeout: float = 5.0) -> list[tuple[bytes, Endpoint]]:
    got: list[tuple[bytes, Endpoint]] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        batch = bind.recv_batch(1024)
        if not batch:
            time.sleep(0.005)
        got.extend((bytes(d), ep) for d, ep in batch)  # GRO parts are memoryviews
    return got


def _payloads(n: int, size: int, last: int | None = None) -> list[bytes]:
    out = [os.urandom(size) for _ in range(n)]
    if last is not None:
        out.append(os.urandom(last))
    return out


def test_gso_groups_same_size_with_short_tail() -> None:
    d = [b"a" * 100] * 3 + [b"b" * 40] + [b"c" * 100] * 2
    groups = gso_groups(d, 65507)
    assert [(size, [len(x) for x in g]) for size, g in groups] == [
        (100, [100, 100, 100, 40]),
        (100, [100, 100]),
    ]


def test_gso_groups_larger_datagram_starts_a_group() -> None:
    groups = gso_groups([b"x" * 50, b"y" * 60, b"z" * 60], 65507)
    assert [(size, len(g)) for size, g in groups] == [(50, 1), (60, 2)]


def test_gso_groups_limits_segments_and_bytes() -> None:
    groups = gso_groups([b"x" * 10] * 130, 65507)
    assert [len(g) for _, g in groups] == [64, 64, 2]
    big = gso_groups([b"x" * 1500] * 50, 65507)
    # 43 * 1500 = 64500 fits, 44 would not.
    assert [len(g) for _, g in big] == [43, 7]
    assert all(sum(len(x) for x in g) <= 65507 for _, g in big)


def test_gso_groups_keep_order() -> None:
    d = [bytes([i]) * (100 if i % 7 else 30) for i in range(200)]
    flat = [x for _, g in gso_groups(d, 65507) for x in g]
    assert flat == d


def test_split_coalesced() -> None:
    buf = memoryview(b"a" * 10 + b"b" * 10 + b"c" * 3)
    assert split_coalesced(buf, 10) == [b"a" * 10, b"b" * 10, b"c" * 3]
    assert split_coalesced(buf, 0) == [bytes(buf)]


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_gso_send_gro_receive_round_trip(family: str) -> None:
    host = "127.0.0.1" if family == "ipv4" else "::1"
    a = UdpBind.open(
        host4=host if family == "ipv4" else None, host6=host if family == "ipv6" else None
    )
    b = UdpBind.open(
        host4=host if family == "ipv4" else None, host6=host if family == "ipv6" else None
    )
    try:
        st = b.stats()
        assert st.gro[family], "kernel refused UDP_GRO"
        assert a.stats().gso[family], "kernel lacks UDP_SEGMENT"
        data = _payloads(40, 1200, last=333) + _payloads(10, 900)
        sent = a.send_batch((host, b.port), data)
        assert sent == len(data)
        got = _recv_all(b, len(data))
        assert [p for p, _ in got] == data
        assert {ep for _, ep in got} == {(host, a.port)}
        sa, sb = a.stats(), b.stats()
        assert sa.gso_sends == 2  # 40 + tail in one sendmsg, 10 in another
        assert sa.send_calls == 2
        assert sb.gro_receives >= 1  # loopback hands the GSO skb over whole
        assert sb.datagrams_received == len(data)
    finally:
        a.close()
        b.close()


def test_gso_send_without_gro_arrives_segmented() -> None:
    a = UdpBind.open(host4="127.0.0.1", host6=None)
    b = UdpBind.open(host4="127.0.0.1", host6=None)
    try:
        b.disable_gro()
        data = _payloads(64, 1000)
        assert a.send_batch(("127.0.0.1", b.port), data) == 64
        got = _recv_all(b, 64)
        assert [p for p, _ in got] == data
        assert b.stats().gro_receives == 0
    finally:
        a.close()
        b.close()


def test_dual_stack_same_port() -> None:
    b = UdpBind.open(host4="127.0.0.1", host6="::1")
    a4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        assert {s.getsockname()[1] for s in b.sockets()} == {b.port}
        v6 = next(s for s in b.sockets() if s.family == socket.AF_INET6)
        assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        a4.sendto(b"four", ("127.0.0.1", b.port))
        a6.sendto(b"six", ("::1", b.port))
        got = _recv_all(b, 2)
        assert sorted(p for p, _ in got) == [b"four", b"six"]
        assert b.recv_batch() == []  # drained: non-blocking, empty
    finally:
        a4.close()
        a6.close()
        b.close()


def test_truncated_datagram_is_dropped_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    # A datagram larger than the receive buffer comes back with MSG_TRUNC: it is dropped
    # (and counted), the next one is received, and sources are (host, port) in both families.
    monkeypatch.setattr(udp, "RECV_BUFFER", 64)
    b = UdpBind.open(host4="127.0.0.1", host6="::1")
    a4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        a4.sendto(b"x" * 100, ("127.0.0.1", b.port))
        a4.sendto(b"small", ("127.0.0.1", b.port))
        a6.sendto(b"six", ("::1", b.port))
        got = _recv_all(b, 2)
        assert sorted(p for p, _ in got) == [b"six", b"small"]
        assert sorted(ep for _, ep in got) == [
            ("127.0.0.1", a4.getsockname()[1]),
            ("::1", a6.getsockname()[1]),
        ]
        assert b.stats().drops == {"recv_truncated": 1}
        assert b.stats().datagrams_received == 2
    finally:
        a4.close()
        a6.close()
        b.close()


def test_ipv4_flood_does_not_starve_ipv6() -> None:
    b = UdpBind.open(host4="127.0.0.1", host6="::1")
    b.disable_gro()
    a4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        a6.sendto(b"six", ("::1", b.port))
        got6: list[bytes] = []
        for _ in range(4):
            for _ in range(40):  # keep more than a batch waiting on the IPv4 socket
                a4.sendto(b"x" * 100, ("127.0.0.1", b.port))
            batch = b.recv_batch(32)
            assert len(batch) >= 32
            got6 += [bytes(d) for d, ep in batch if ":" in ep[0]]
        assert got6 == [b"six"]
    finally:
        a4.close()
        a6.close()
        b.close()


class _FlakySocket:
    """Wraps a real socket; fails chosen calls the way the kernel would."""

    def __init__(self, sock: socket.socket, **failures: list[BaseException]) -> None:
        self._sock = sock
        self._failures = failures
        self.family = sock.family

    def _maybe_fail(self, name: str) -> None:
        pending = self._failures.get(name)
        if pending:
            raise pending.pop(0)

    def sendmsg(self, *args: Any) -> int:
        self._maybe_fail("sendmsg")
        return self._sock.sendmsg(*args)

    def sendto(self, *args: Any) -> int:
        self._maybe_fail("sendto")
        return self._sock.sendto(*args)

    def recvmsg(self, *args: Any) -> Any:
        self._maybe_fail("recvmsg")
        return self._sock.recvmsg(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _wrap(bind: UdpBind, **failures: list[BaseException]) -> None:
    for s in bind._socks.values():
        s.sock = _FlakySocket(s.sock, **failures)  # type: ignore[assignment]


def test_gso_eio_disables_gso_and_resends() -> None:
    a = UdpBind.open(host4="127.0.0.1", host6=None)
    b = UdpBind.open(host4="127.0.0.1", host6=None)
    try:
        _wrap(a, sendmsg=[OSError(errno.EIO, "Input/output error")])
        data = _payloads(20, 500)
        assert a.send_batch(("127.0.0.1", b.port), data) == 20
        got = _recv_all(b, 20)
        assert [p for p, _ in got] == data
        st = a.stats()
        assert st.gso == {"ipv4": False}
        assert st.events["gso_disabled_ipv4"] == 1
        assert st.gso_sends == 0 and st.send_calls == 20
        # Later batches go one by one without trying GSO again.
        assert a.send_batch(("127.0.0.1", b.port), data) == 20
        assert a.stats().send_calls == 40
    finally:
        a.close()
        b.close()


def test_gso_einval_falls_back_for_that_batch_only() -> None:
    a = UdpBind.open(host4="127.0.0.1", host6=None)
    b = UdpBind.open(host4="127.0.0.1", host6=None)
    try:
        _wrap(a, sendmsg=[OSError(errno.EINVAL, "Invalid argument")])
        data = _payloads(5, 500)
        assert a.send_batch(("127.0.0.1", b.port), data) == 5
        assert a.send_batch(("127.0.0.1", b.port), data) == 5
        assert [p for p, _ in _recv_all(b, 10)] == data + data
        st = a.stats()
        assert st.gso == {"ipv4": True}
        assert st.events["gso_rejected"] == 1
        assert st.gso_sends == 1
    finally:
        a.close()
        b.close()


def test_hard_send_error_is_counted_not_raised() -> None:
    a = UdpBind.open(host4="127.0.0.1", host6=None)
    try:
        _wrap(a, sendto=[OSError(errno.ENETUNREACH, "Network is unreachable")])
        assert a.send_batch(("127.0.0.1", 9), [b"x"]) == 0
        assert a.stats().drops == {"send_ENETUNREACH": 1}
        # No IPv6 socket: counted as a drop too.
        assert a.send_batch(("::1", 9), [b"x", b"y"]) == 0
        assert a.stats().drops["no_socket_for_family"] == 2
    finally:
        a.close()


def test_connection_refused_on_receive_is_not_fatal() -> None:
    a = UdpBind.open(host4="127.0.0.1", host6=None)
    b = UdpBind.open(host4="127.0.0.1", host6=None)
    try:
        _wrap(b, recvmsg=[ConnectionRefusedError(errno.ECONNREFUSED, "refused")])
        a.send_batch(("127.0.0.1", b.port), [b"hello"])
        got = _recv_all(b, 1)
        assert [p for p, _ in got] == [b"hello"]
        assert b.stats().events["recv_connection_refused"] == 1
    finally:
        a.close()
        b.close()


def test_backlog_queues_in_order_and_drains_on_writable() -> None:
    async def main() -> None:
        a = UdpBind.open(host4="127.0.0.1", host6=None)
        b = UdpBind.open(host4="127.0.0.1", host6=None)
        drained = asyncio.Event()
        try:
            a.attach(asyncio.get_running_loop(), lambda: None, drained.set)
            # The first GSO send would block: everything queues until the socket is writable.
            _wrap(a, sendmsg=[BlockingIOError(errno.EAGAIN, "again")])
            first = _payloads(3, 100)
            dest = ("127.0.0.1", b.port)
            assert a.send_batch(dest, first) == 0
            assert a.backlogged
            second = _payloads(4, 200)
            assert a.send_batch(dest, second) == 0  # queued behind the first
            assert a.stats().pending == 7
            await asyncio.wait_for(drained.wait(), 5)
            assert not a.backlogged
            got = _recv_all(b, 7)
            assert [p for p, _ in got] == first + second
        finally:
            a.close()
            b.close()

    asyncio.run(main())


def test_reader_callback_fires_and_pause_stops_it() -> None:
    async def main() -> None:
        a = UdpBind.open(host4="127.0.0.1", host6=None)
        b = UdpBind.open(host4="127.0.0.1", host6=None)
        loop = asyncio.get_running_loop()
        got: list[bytes] = []
        ready = asyncio.Event()

        def on_readable() -> None:
            got.extend(bytes(p) for p, _ in b.recv_batch())
            ready.set()

        try:
            b.attach(loop, on_readable, lambda: None)
            b.resume_reading()
            assert b.reading
            a.send_batch(("127.0.0.1", b.port), [b"one", b"two"])
            await asyncio.wait_for(ready.wait(), 5)
            while len(got) < 2:
                ready.clear()
                await asyncio.wait_for(ready.wait(), 5)
            assert got == [b"one", b"two"]
            b.pause_reading()
            assert not b.reading
            ready.clear()
            a.send_batch(("127.0.0.1", b.port), [b"three"])
            await asyncio.sleep(0.1)
            assert not ready.is_set()
            assert [p for p, _ in b.recv_batch()] == [b"three"]
        finally:
            a.close()
            b.close()

    asyncio.run(main())


@pytest.mark.root
def test_fwmark_and_forced_buffers_as_root() -> None:
    a = UdpBind.open(fwmark=0x51820, host4="127.0.0.1", host6=None)
    try:
        (sock,) = a.sockets()
        assert sock.getsockopt(socket.SOL_SOCKET, udp.SO_MARK) == 0x51820
        # The kernel doubles the value it stores; FORCE passes rmem_max.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= udp.SOCKET_BUFFER
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= udp.SOCKET_BUFFER
    finally:
        a.close()
