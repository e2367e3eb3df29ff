"""wiretun.Tunnel driven from Python, in this process (the thread enters a namespace), against
Debian's wireguard-go: peer operations, rebind, fwmark, the uapi/routing options, stats(), and
a core bug ending the tunnel (logged, `failure` set) instead of being counted away."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import pytest

from wiretun import Tunnel
from wiretun.lab.netns import NetNS, Topology, unique_name
from wiretun.lab.peers import KeyPair, WireguardGoPeer, have_wireguard_go
from wiretun.tunnel.uapi import socket_path

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not have_wireguard_go(), reason="needs wireguard-go and wg"),
]


def _config(keys: KeyPair, port: int, extra_peer: str = "") -> str:
    return (
        f"[Interface]\nPrivateKey = {keys.private}\nAddress = 10.9.0.1/24\n"
        f"ListenPort = {port}\n{extra_peer}"
    )


def _echo_through(ns: NetNS, addr: str, port: int = 7000) -> bool:
    """One UDP datagram from `ns` to a socket of ours at `addr` (this thread's namespace)
    and back: the tunnel carried it both ways."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("10.9.0.1", port))
    server.setblocking(False)
    code = (
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.settimeout(5)\ns.sendto(b'hi', ('{addr}', {port}))\nprint(s.recv(10).decode())"
    )

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        data, peer = await loop.sock_recvfrom(server, 100)
        await loop.sock_sendto(server, data, peer)

    async def both() -> str:
        task = asyncio.create_task(serve())
        out = await asyncio.to_thread(ns.run, sys.executable, "-c", code, timeout=20)
        await asyncio.wait_for(task, 5)
        return out.strip()

    try:
        return asyncio.get_event_loop().run_until_complete(both()) == "hi"
    finally:
        server.close()


def _wireguard_go(topology: Topology) -> tuple[NetNS, WireguardGoPeer]:
    a, b = topology.netns(), topology.netns()
    topology.veth(a, b, "192.168.241.1/24", "192.168.241.2/24")
    wg = WireguardGoPeer(b).start()
    wg.configure(listen_port=51821)
    wg.link_up(["10.9.0.2/24"])
    return a, wg


def test_peer_operations_rebind_and_stats(topology: Topology) -> None:
    a, wg = _wireguard_go(topology)
    keys = KeyPair.generate()
    name = unique_name("wtapi")
    psk = KeyPair.generate().public  # any 32 bytes in base64
    loop = asyncio.new_event_loop()
    try:
        with wg, a.enter():
            t = Tunnel.from_config(_config(keys, 51820), name=name)
            loop.run_until_complete(t.start())
            assert t.running and t.listen_port == 51820
            assert t.uapi_path == socket_path(name)
            # No peer yet: add one, as `wg set` would, then let wireguard-go initiate.
            t.add_peer(wg.keys.public, allowed_ips=["10.9.0.2/32"], preshared_key=psk)
            with pytest.raises(ValueError, match="exists already"):
                t.add_peer(wg.keys.public)
            wg.add_peer(
                keys.public,
                allowed_ips=["10.9.0.1/32"],
                endpoint="192.168.241.1:51820",
                preshared_key=psk,
            )
            asyncio.set_event_loop(loop)
            assert _echo_through(wg.ns, "10.9.0.1")
            (peer,) = t.stats().peers
            assert peer.public_key == wg.keys.public and peer.has_session
            assert peer.endpoint == "192.168.241.2:51821"  # learnt from the handshake
            assert peer.rx_bytes > 0 and peer.tx_bytes > 0
            assert t.snapshot().peers[0].preshared_key is not None

            # Move our port; wireguard-go follows once told, and the session carries on.
            assert t.rebind(51830) == 51830
            wg.add_peer(keys.public, allowed_ips=["10.9.0.1/32"], endpoint="192.168.241.1:51830")
            assert _echo_through(wg.ns, "10.9.0.1", 7001)
            assert t.stats().listen_port == 51830

            t.set_persistent_keepalive(wg.keys.public, 25)
            t.set_endpoint(wg.keys.public, "192.168.241.2:51821")
            t.set_allowed_ips(wg.keys.public, ["10.9.0.2/32", "10.77.0.0/16"])
            t.set_fwmark(0x1234)
            (snap,) = t.snapshot().peers
            assert snap.persistent_keepalive == 25
            assert [str(n) for n in snap.allowed_ips] == ["10.9.0.2/32", "10.77.0.0/16"]
            assert t.snapshot().fwmark == 0x1234
            with pytest.raises(OSError, match="Address already in use"):
                other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                other.bind(("0.0.0.0", 51840))
                try:
                    t.rebind(51840)
                finally:
                    other.close()
            assert t.listen_port == 51830  # the old sockets are kept

            t.set_preshared_key(wg.keys.public, None)
            assert t.snapshot().peers[0].preshared_key is None
            t.remove_peer(wg.keys.public)
            with pytest.raises(KeyError):
                t.remove_peer(wg.keys.public)
            assert t.stats().peers == ()
            loop.run_until_complete(t.close())
            assert not t.running and t.failure is None
            assert name not in a.run("ip", "-o", "link")
            assert not os.path.exists(socket_path(name))
    finally:
        loop.close()
        asyncio.set_event_loop(None)


def test_without_uapi_or_routing(topology: Topology) -> None:
    a, wg = _wireguard_go(topology)
    keys = KeyPair.generate()
    name = unique_name("wtapi")
    peer = f"[Peer]\nPublicKey = {wg.keys.public}\nAllowedIPs = 10.77.0.0/16\n"

    async def main() -> None:
        async with Tunnel.from_config(
            _config(keys, 51820, peer), name=name, uapi=False, routing=False
        ) as t:
            assert t.uapi_path is None and not os.path.exists(socket_path(name))
            assert t.stats().uapi is None
            # The device is there with its address, but no route for the AllowedIPs.
            assert "10.9.0.1/24" in a.run("ip", "-o", "addr", "show", "dev", name)
            assert "10.77.0.0/16" not in a.run("ip", "route")

    with wg, a.enter():
        asyncio.run(main())
    assert name not in a.run("ip", "-o", "link")


def test_a_core_bug_ends_the_tunnel_and_is_kept_in_failure(
    topology: Topology, caplog: pytest.LogCaptureFixture
) -> None:
    a, wg = _wireguard_go(topology)
    keys = KeyPair.generate()
    name = unique_name("wtapi")

    async def main() -> Tunnel:
        t = Tunnel.from_config(_config(keys, 51820), name=name)
        await t.start()

        def broken(*args: object) -> None:
            raise ZeroDivisionError("core bug")

        t.device.handle_timers = broken  # type: ignore[method-assign, assignment]
        t.add_peer(wg.keys.public, endpoint="192.168.241.2:51821", persistent_keepalive=1)
        await asyncio.wait_for(t.wait_closed(), 20)
        return t

    with wg, a.enter():
        t = asyncio.run(main())
    assert isinstance(t.failure, ZeroDivisionError)
    assert t.stop_reason is not None and "data path failed" in t.stop_reason
    assert "bug in the WireGuard core (core_timers): the tunnel stops" in caplog.text
    assert name not in a.run("ip", "-o", "link")
