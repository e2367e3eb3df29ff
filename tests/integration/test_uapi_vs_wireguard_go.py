"""The same UAPI sets to wireguard-go and to our server over a live Device: the same peers
and allowed IPs after each (update_only semantics, a peer cut in pieces)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil

import pytest

from wiretun.lab.netns import Topology, unique_name
from wiretun.lab.peers import WireguardGoPeer
from wiretun.tunnel import uapi_client
from wiretun.tunnel.backend import DeviceBackend
from wiretun.tunnel.uapi import SOCKET_DIR, UapiServer
from wiretun.wireguard.device import Device

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="needs wireguard-go"),
]

PRIVATE = "58" * 31 + "40"
K1, K2, K3 = "a1" * 32, "b2" * 32, "c3" * 32


def _many(prefix: str, n: int) -> str:
    return "".join(f"allowed_ip=10.{prefix}.{i // 256}.{i % 256}/32\n" for i in range(n))


SETS = [
    f"private_key={PRIVATE}\npublic_key={K1}\nallowed_ip=10.0.0.1/32\nallowed_ip=10.0.0.2/32\n",
    # A new peer takes 10.0.0.1, then update_only removes it (and the address with it).
    f"public_key={K2}\nallowed_ip=10.0.0.1/32\nupdate_only=true\nallowed_ip=10.0.0.9/32\n",
    # The same for a peer whose lines go out in pieces (over 1024 allowed IPs).
    f"public_key={K3}\n{_many('1', 1500)}update_only=true\n{_many('2', 10)}",
    # An existing peer: update_only changes nothing.
    f"public_key={K1}\nallowed_ip=10.0.0.3/32\nupdate_only=true\nallowed_ip=10.0.0.4/32\n",
    f"public_key={K1}\n{_many('3', 1500)}update_only=true\n{_many('4', 10)}",
    f"public_key={K2}\nupdate_only=true\nallowed_ip=10.0.0.5/32\n",
]


def _peers(reply: str) -> dict[bytes, frozenset[str]]:
    snapshot = uapi_client.parse_get(reply)
    return {p.public_key: frozenset(map(str, p.allowed_ips)) for p in snapshot.peers}


def test_update_only_as_wireguard_go_does(topology: Topology) -> None:
    go = WireguardGoPeer(topology.netns()).start()
    ours = unique_name("wtv")
    ours_path = os.path.join(SOCKET_DIR, f"{ours}.sock")
    device = Device(bytes.fromhex(PRIVATE), listen_port=51820)
    after: list[tuple[dict[bytes, frozenset[str]], dict[bytes, frozenset[str]]]] = []

    def talk() -> None:
        for body in SETS:
            for path in (go.socket_path, ours_path):
                assert uapi_client.request(path, f"set=1\n{body}\n".encode(), 20) == "errno=0"
            after.append(
                (_peers(uapi_client.request(go.socket_path, b"get=1\n\n", 20)),
                 _peers(uapi_client.request(ours_path, b"get=1\n\n", 20)))
            )  # fmt: skip

    async def main() -> None:
        backend = DeviceBackend(device, now=lambda: 100.0)
        async with UapiServer(ours, backend):
            await asyncio.to_thread(talk)

    try:
        asyncio.run(main())
    finally:
        go.stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ours_path)
    for i, (theirs, mine) in enumerate(after):
        assert mine == theirs, f"after set {i}"
    final = after[-1][0]
    assert set(final) == {bytes.fromhex(K1)}
    assert len(final[bytes.fromhex(K1)]) == 3 + 1510  # 10.0.0.2-4 and 1510; .1 went with K2
