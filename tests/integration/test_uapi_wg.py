"""The real `wg` (wireguard-tools) against our UAPI server in /var/run/wireguard."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import ipaddress
import os
import shutil
import stat
from collections.abc import Iterator

import pytest

from wiretun.lab.netns import unique_name
from wiretun.testing.uapi import MemoryBackend
from wiretun.tunnel.uapi import SOCKET_DIR, UapiInUseError, UapiServer
from wiretun.tunnel.uapi_protocol import (
    DeviceSnapshot,
    PeerSnapshot,
    SetListenPort,
    SetOperation,
    UapiError,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("wg") is None, reason="needs wg from wireguard-tools"),
]

PRIV = "4Cb6HXpToPFrwjVch+a1gI9TS1tXKYn+u4/qWftbuW4="
PUB = "whfRkAvtsx3Cblt9O//zEeO0QAVTCHmBo8ncjCw23UQ="
PEER = "BDU8H/VB+PjZSlFV55N3qyOHYXtlNMTngERTvM8aaxA="
PEER2 = "CQIGzX+4JggTY8w0ltnu4+Dck78nEkwDeAFtfzhb4QQ="
BUSY_PORT = 1


class Backend(MemoryBackend):
    """In-memory device state; refuses one port as a real device would a busy one."""

    def apply(self, ops: list[SetOperation]) -> None:
        if any(isinstance(op, SetListenPort) and op.port == BUSY_PORT for op in ops):
            raise UapiError(errno.EADDRINUSE, "port in use")
        super().apply(ops)


@pytest.fixture
def name() -> Iterator[str]:
    ifname = unique_name("wtu")
    try:
        yield ifname
    finally:
        # Never leave a socket behind, whatever the test did.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SOCKET_DIR, f"{ifname}.sock"))


async def wg(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "wg", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_wg_show_set_showconf_remove(name: str) -> None:
    async def main() -> None:
        backend = Backend(
            DeviceSnapshot(
                private_key=base64.b64decode(PRIV),
                listen_port=51820,
                fwmark=0x1234,
                peers=(
                    PeerSnapshot(
                        base64.b64decode(PEER2),
                        endpoint=("::1", 4500),
                        tx_bytes=1000,
                        rx_bytes=2000,
                        persistent_keepalive=25,
                        allowed_ips=(ipaddress.ip_network("10.1.0.0/16"),),
                    ),
                ),
            )
        )
        server = UapiServer(name, backend)
        await server.start()
        try:
            path = os.path.join(SOCKET_DIR, f"{name}.sock")
            assert server.path == path
            mode = os.stat(path).st_mode
            assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
            assert stat.S_IMODE(os.stat(SOCKET_DIR).st_mode) == 0o755

            rc, out, err = await wg("show", name)
            assert rc == 0, err
            assert f"interface: {name}\n" in out
            assert f"  public key: {PUB}\n" in out  # wg derived it from our private_key
            assert "  listening port: 51820\n" in out
            assert "  fwmark: 0x1234\n" in out
            assert f"peer: {PEER2}\n" in out
            assert "  transfer: 1.95 KiB received, 1000 B sent\n" in out

            rc, out, err = await wg("show", "interfaces")
            assert rc == 0 and name in out.split(), err

            rc, _, err = await wg(
                "set",
                name,
                "peer",
                PEER,
                "allowed-ips",
                "10.9.0.0/24",
                "endpoint",
                "127.0.0.1:5555",
            )
            assert rc == 0, err
            rc, out, err = await wg("show", name, "dump")
            assert rc == 0, err
            assert out.splitlines() == [
                f"{PRIV}\t{PUB}\t51820\t0x1234",
                f"{PEER2}\t(none)\t[::1]:4500\t10.1.0.0/16\t0\t2000\t1000\t25",
                f"{PEER}\t(none)\t127.0.0.1:5555\t10.9.0.0/24\t0\t0\t0\toff",
            ]

            rc, out, err = await wg("showconf", name)
            assert rc == 0, err
            assert out == (
                "[Interface]\n"
                "ListenPort = 51820\n"
                "FwMark = 0x1234\n"
                f"PrivateKey = {PRIV}\n"
                "\n"
                "[Peer]\n"
                f"PublicKey = {PEER2}\n"
                "AllowedIPs = 10.1.0.0/16\n"
                "Endpoint = [::1]:4500\n"
                "PersistentKeepalive = 25\n"
                "\n"
                "[Peer]\n"
                f"PublicKey = {PEER}\n"
                "AllowedIPs = 10.9.0.0/24\n"
                "Endpoint = 127.0.0.1:5555\n"
            )

            rc, _, err = await wg("set", name, "peer", PEER, "remove")
            assert rc == 0, err
            assert [p.public_key for p in backend.snapshot.peers] == [base64.b64decode(PEER2)]
            rc, out, err = await wg("show", name, "peers")
            assert rc == 0 and out.split() == [PEER2], err

            # A failed set comes back to wg as a negative errno, which it reports.
            rc, _, err = await wg("set", name, "listen-port", str(BUSY_PORT))
            assert rc != 0
            assert "Address already in use" in err
            assert backend.snapshot.listen_port == 51820

            # A second server for the same name is refused while we are alive.
            with pytest.raises(UapiInUseError):
                await UapiServer(name, Backend()).start()
            assert os.path.exists(path)
        finally:
            await server.close()
        assert not os.path.exists(path)
        rc, _, _ = await wg("show", name)
        assert rc != 0

    asyncio.run(main())


def test_tunnel_notices_socket_removal(name: str) -> None:
    async def main() -> None:
        async with UapiServer(name, Backend(), poll_interval=0.05) as server:
            rc, _, err = await wg("show", name)
            assert rc == 0, err
            os.unlink(server.path)
            await asyncio.wait_for(server.removed.wait(), 5)

    asyncio.run(main())
