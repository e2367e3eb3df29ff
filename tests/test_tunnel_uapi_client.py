"""wiretun.tunnel.uapi_client against wiretun's own UapiServer on a temporary socket dir:
get=1 parsed back to the snapshot format_get wrote, stats, and devices without stats."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import tempfile
from collections.abc import Iterable, Iterator, Mapping

import pytest

from wiretun.testing.uapi import MemoryBackend
from wiretun.tunnel import uapi_client
from wiretun.tunnel.uapi import UapiServer
from wiretun.tunnel.uapi_protocol import STATS_MARKER, DeviceSnapshot, PeerSnapshot, format_get

PEER = PeerSnapshot(
    public_key=bytes(range(32)),
    preshared_key=b"\x07" * 32,
    endpoint=("2001:db8::1", 51820),
    last_handshake_ns=1_700_000_000_123_456_789,
    tx_bytes=10,
    rx_bytes=20,
    persistent_keepalive=25,
    allowed_ips=(ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00::/64")),
)
DEVICE = DeviceSnapshot(b"\x01" * 32, 51820, 0x1234, (PEER, PeerSnapshot(b"\x02" * 32)))


def test_parse_get_inverts_format_get() -> None:
    reply = format_get(DEVICE).removesuffix("\n\n")
    assert uapi_client.parse_get(reply) == DEVICE
    assert uapi_client.parse_get("errno=0") == DeviceSnapshot()


@pytest.fixture
def sock_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="wt-uapi-client-") as path:
        yield path


def _serve(
    sock_dir: str, name: str, stats: Mapping[str, object] | Iterable[str] | None, check: object
) -> None:
    async def main() -> None:
        server = UapiServer(
            name, MemoryBackend(DEVICE), socket_dir=sock_dir,
            stats=None if stats is None else (lambda: stats),
        )  # fmt: skip
        async with server:
            await asyncio.to_thread(check)  # type: ignore[arg-type]

    asyncio.run(main())


def test_get_and_stats_from_a_live_server(sock_dir: str) -> None:
    def check() -> None:
        assert uapi_client.interfaces(sock_dir) == ["wt0"]
        assert uapi_client.get("wt0", sock_dir) == DEVICE
        assert uapi_client.stats("wt0", sock_dir) == {"drops": {"core.mac1": 1}}

    _serve(sock_dir, "wt0", {"drops": {"core.mac1": 1}}, check)


def test_stats_given_in_pieces_arrive_as_one_line(sock_dir: str) -> None:
    pieces = ['{"peers":[', '{"a":1}', ',{"a":2}', '],"drops":{}}']

    def check() -> None:
        assert uapi_client.stats("wt2", sock_dir) == {"peers": [{"a": 1}, {"a": 2}], "drops": {}}

    _serve(sock_dir, "wt2", pieces, check)


def test_stats_failing_midway_end_with_an_errno(sock_dir: str) -> None:
    def pieces() -> Iterator[str]:
        yield '{"peers":['
        raise RuntimeError("a bug")

    def check() -> None:
        raw = uapi_client.request(f"{sock_dir}/wt3.sock", b"wiretun-stats=1\n\n")
        assert raw.endswith("\nerrno=-55")  # after whatever part of the line went out
        assert uapi_client.stats("wt3", sock_dir) is None

    async def main() -> None:
        server = UapiServer("wt3", MemoryBackend(DEVICE), socket_dir=sock_dir, stats=pieces)
        async with server:
            await asyncio.to_thread(check)

    asyncio.run(main())


def test_get_unless_stats_reads_one_line_of_a_wiretun_device(sock_dir: str) -> None:
    async def main() -> None:
        with_stats = UapiServer("wt4", MemoryBackend(DEVICE), socket_dir=sock_dir,
                                stats=lambda: {"drops": {}})  # fmt: skip
        without = UapiServer("wt5", MemoryBackend(DEVICE), socket_dir=sock_dir)
        async with with_stats, without:
            assert await asyncio.to_thread(uapi_client.get_unless_stats, "wt4", sock_dir) is None
            reply = await asyncio.to_thread(uapi_client.get_unless_stats, "wt5", sock_dir)
            assert reply is not None and uapi_client.parse_get(reply) == DEVICE
            # The aborted get is no failure on the server's side.
            await asyncio.sleep(0.05)
            assert with_stats.statistics().failed == 0 and without.statistics().failed == 0
            # One get, nothing refused: the stats request was never sent to wt5 (wireguard-go
            # would log an error for it).
            assert without.statistics().gets == 1

    asyncio.run(main())


def test_the_marker_counts_among_the_device_lines_only() -> None:
    marker = STATS_MARKER.rstrip("\n")
    assert uapi_client.serves_stats(f"{marker}\nlisten_port=1\nerrno=0")
    assert uapi_client.serves_stats(f"listen_port=1\n{marker}\nerrno=0")
    assert not uapi_client.serves_stats("listen_port=1\nerrno=0")
    assert not uapi_client.serves_stats(f"public_key={'00' * 32}\n{marker}\nerrno=0")
    # The parser reads around it.
    assert uapi_client.parse_get(marker + "\n" + format_get(DEVICE)) == DEVICE


def test_a_device_without_stats_gives_none(sock_dir: str) -> None:
    def check() -> None:
        assert uapi_client.stats("wt1", sock_dir) is None

    _serve(sock_dir, "wt1", None, check)


def test_a_peer_that_closes_on_the_request_gives_none(sock_dir: str) -> None:
    # As wireguard-go does for an operation it does not know.
    path = os.path.join(sock_dir, "wgg0.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def close_it() -> None:
        conn, _ = listener.accept()
        conn.recv(100)
        conn.close()

    try:

        async def main() -> object:
            task = asyncio.get_running_loop().run_in_executor(None, close_it)
            result = await asyncio.to_thread(uapi_client.stats, "wgg0", sock_dir)
            await task
            return result

        assert asyncio.run(main()) is None
    finally:
        listener.close()


def test_nobody_there_is_one_clear_error(sock_dir: str) -> None:
    with pytest.raises(uapi_client.UapiClientError) as info:
        uapi_client.get("wt9", sock_dir)
    assert str(info.value) == (
        f"no device answers on {sock_dir}/wt9.sock: No such file or directory"
    )
