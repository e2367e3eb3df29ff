"""`wiretun up` against Debian's wireguard-go (and itself) in namespaces joined by veth pairs.

Modelled on wireguard's netns.sh: every test builds its own topology and every assertion is
about traffic that crossed it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any

import pytest

from wiretun.lab.netns import NetNS, Topology
from wiretun.lab.peers import (
    KeyPair,
    PeerSpec,
    WireguardGoPeer,
    WiretunPeer,
    generate_psk,
    have_wireguard_go,
    udp_ping,
    wiretun_command,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not have_wireguard_go(), reason="needs wireguard-go and wg"),
]

FWMARK = "0xca6c"  # the first Table=auto instance in a namespace: table 51820 as its mark
TABLE = "51820"


def _iperf(client: NetNS, server: NetNS, addr: str, *args: str) -> dict[str, Any]:
    """One short iperf3 run (2 s) from `client` to a one-shot server at `addr` in `server`."""
    srv = server.popen(
        "iperf3", "-s", "-1", "-B", addr, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 5
        while "5201" not in server.run("ss", "-ltnH"):
            assert time.monotonic() < deadline, "iperf3 server did not start"
            time.sleep(0.05)
        out = client.run("iperf3", "-c", addr, "-t", "2", "-J", *args, timeout=30)
        result: dict[str, Any] = json.loads(out)
        return result
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.wait()


def _tcp_received(result: dict[str, Any]) -> int:
    return int(result["end"]["sum_received"]["bytes"])


def _wiretun_gone(ns: NetNS, w: WiretunPeer) -> None:
    """Everything `up` made is gone: device, policy rules, routes, socket, pid file."""
    assert w.name not in ns.run("ip", "-o", "link")
    assert FWMARK not in ns.run("ip", "rule") + ns.run("ip", "-6", "rule")
    # A table without routes may not exist at all (an error for `ip -6`): empty either way.
    for family in ("-4", "-6"):
        assert ns.run("ip", family, "route", "show", "table", TABLE, check=False).strip() == ""
    assert not os.path.exists(w.socket_path)
    assert not os.path.exists(w.pid_path)


def _two_namespaces(topology: Topology) -> tuple[NetNS, NetNS]:
    a, b = topology.netns(), topology.netns()
    topology.veth(a, b, "192.168.241.1/24", "192.168.241.2/24")
    return a, b


def test_wiretun_initiates_to_wireguard_go(topology: Topology) -> None:
    a, b = _two_namespaces(topology)
    psk = generate_psk()
    with WireguardGoPeer(b).start() as wg, WiretunPeer(a) as wt:
        wg.configure(listen_port=51821)
        wg.add_peer(wt.keys.public, allowed_ips=["10.9.0.1/32", "fd00:9::1/128"], preshared_key=psk)
        wg.link_up(["10.9.0.2/24", "fd00:9::2/64"])
        wt.write_config(
            addresses=["10.9.0.1/24", "fd00:9::1/64"],
            peers=[
                PeerSpec(
                    wg.keys.public,
                    ["10.9.0.2/32", "fd00:9::2/128"],
                    endpoint="192.168.241.2:51821",
                    preshared_key=psk,
                )
            ],
        )
        wt.start()
        assert udp_ping(a, b, "10.9.0.2") == 3
        assert udp_ping(a, b, "fd00:9::2") == 3

        up = _iperf(a, b, "10.9.0.2")
        down = _iperf(a, b, "10.9.0.2", "-R")
        assert _tcp_received(up) > 1_000_000
        assert _tcp_received(down) > 1_000_000
        udp = _iperf(a, b, "fd00:9::2", "-u", "-b", "50M", "-l", "1200")
        summary = udp["end"]["sum"]
        assert summary["packets"] > 1000
        assert summary["lost_percent"] < 50

        # `wg` talks to wiretun through its UAPI socket.
        iface, peers = wt.dump()
        assert iface[1] == wt.keys.public
        assert iface[3] == "off"  # no default route: no mark, as with wg-quick
        (peer,) = peers
        assert peer.public_key == wg.keys.public
        assert peer.preshared_key == psk
        assert peer.endpoint == "192.168.241.2:51821"
        assert sorted(peer.allowed_ips) == ["10.9.0.2/32", "fd00:9::2/128"]
        assert peer.latest_handshake > 0
        assert peer.rx_bytes > 1_000_000 and peer.tx_bytes > 1_000_000
        assert wt.stop() == 0
        _wiretun_gone(a, wt)


def test_wireguard_go_initiates_to_wiretun(topology: Topology) -> None:
    a, b = _two_namespaces(topology)
    with WireguardGoPeer(b).start() as wg, WiretunPeer(a) as wt:
        wt.write_config(
            addresses=["10.9.0.1/24", "fd00:9::1/64"],
            listen_port=51820,
            peers=[PeerSpec(wg.keys.public, ["10.9.0.2/32", "fd00:9::2/128"])],
        )
        wt.start()
        wg.configure(listen_port=51821)
        wg.add_peer(
            wt.keys.public,
            allowed_ips=["10.9.0.1/32", "fd00:9::1/128"],
            endpoint="192.168.241.1:51820",
        )
        wg.link_up(["10.9.0.2/24", "fd00:9::2/64"])
        assert udp_ping(b, a, "10.9.0.1") == 3
        assert udp_ping(b, a, "fd00:9::1") == 3
        # wiretun learned the endpoint from the handshake and answers through it.
        (peer,) = wt.dump()[1]
        assert peer.endpoint == "192.168.241.2:51821"
        assert udp_ping(a, b, "10.9.0.2") == 3
        got = _iperf(b, a, "10.9.0.1")
        assert _tcp_received(got) > 1_000_000


def test_two_peers_routed_by_allowed_ips(topology: Topology) -> None:
    hub, b, c = topology.netns(), topology.netns(), topology.netns()
    topology.veth(hub, b, "192.168.241.1/24", "192.168.241.2/24")
    topology.veth(hub, c, "192.168.242.1/24", "192.168.242.2/24")
    with (
        WireguardGoPeer(b).start() as wb,
        WireguardGoPeer(c).start() as wc,
        WiretunPeer(hub) as wt,
    ):
        for peer, port, addr in ((wb, 51821, "10.9.0.2/24"), (wc, 51822, "10.9.0.3/24")):
            peer.configure(listen_port=port)
            peer.add_peer(wt.keys.public, allowed_ips=["10.9.0.0/24"])
            peer.link_up([addr])
        wt.write_config(
            addresses=["10.9.0.1/24"],
            peers=[
                PeerSpec(wb.keys.public, ["10.9.0.2/32"], endpoint="192.168.241.2:51821"),
                PeerSpec(wc.keys.public, ["10.9.0.3/32"], endpoint="192.168.242.2:51822"),
            ],
        )
        wt.start()
        assert udp_ping(hub, b, "10.9.0.2") == 3
        by_key = {p.public_key: p for p in wt.dump()[1]}
        # Only the peer owning 10.9.0.2 was used.
        assert by_key[wb.keys.public].latest_handshake > 0
        assert by_key[wc.keys.public].latest_handshake == 0
        assert by_key[wc.keys.public].tx_bytes == 0
        assert udp_ping(hub, c, "10.9.0.3") == 3
        by_key = {p.public_key: p for p in wt.dump()[1]}
        assert by_key[wc.keys.public].latest_handshake > 0
        assert by_key[wc.keys.public].rx_bytes > 0


def test_runtime_wg_set_adds_a_peer_and_moves_the_port(topology: Topology) -> None:
    hub, b, c = topology.netns(), topology.netns(), topology.netns()
    topology.veth(hub, b, "192.168.241.1/24", "192.168.241.2/24")
    topology.veth(hub, c, "192.168.242.1/24", "192.168.242.2/24")
    with (
        WireguardGoPeer(b).start() as wb,
        WireguardGoPeer(c).start() as wc,
        WiretunPeer(hub) as wt,
    ):
        for peer, port, addr in ((wb, 51821, "10.9.0.2/24"), (wc, 51822, "10.9.0.3/24")):
            peer.configure(listen_port=port)
            peer.add_peer(wt.keys.public, allowed_ips=["10.9.0.0/24"])
            peer.link_up([addr])
        wt.write_config(
            addresses=["10.9.0.1/32"],
            peers=[PeerSpec(wb.keys.public, ["10.9.0.2/32"], endpoint="192.168.241.2:51821")],
        )
        wt.start()
        assert udp_ping(hub, b, "10.9.0.2") == 3
        assert len(wt.dump()[1]) == 1
        wt.wg(
            "set",
            wt.name,
            "peer",
            wc.keys.public,
            "allowed-ips",
            "10.9.0.3/32",
            "endpoint",
            "192.168.242.2:51822",
        )
        # As with wireguard-go, routes are the caller's job (wg-quick's, normally).
        hub.run("ip", "route", "add", "10.9.0.3/32", "dev", wt.name)
        assert udp_ping(hub, c, "10.9.0.3") == 3
        keys = {p.public_key for p in wt.dump()[1]}
        assert keys == {wb.keys.public, wc.keys.public}
        wt.wg("set", wt.name, "peer", wc.keys.public, "remove")
        assert {p.public_key for p in wt.dump()[1]} == {wb.keys.public}
        assert udp_ping(hub, c, "10.9.0.3", count=1, timeout=1) == 0
        # A new listen port rebinds the sockets; b roams to it on our next packet.
        wt.wg("set", wt.name, "listen-port", "40000")
        assert wt.dump()[0][2] == "40000"
        assert udp_ping(hub, b, "10.9.0.2") == 3
        assert wb.dump()[1][0].endpoint == "192.168.241.1:40000"


def test_wiretun_to_wiretun_over_ipv6_with_offload_and_queues(topology: Topology) -> None:
    a, b = topology.netns(), topology.netns()
    topology.veth(a, b, "fd01::1/64", "fd01::2/64")
    with WiretunPeer(a) as wa, WiretunPeer(b) as wb:
        wa.write_config(
            addresses=["10.9.0.1/24", "fd00:9::1/64"],
            listen_port=51820,
            peers=[
                PeerSpec(
                    wb.keys.public,
                    ["10.9.0.2/32", "fd00:9::2/128"],
                    endpoint="[fd01::2]:51821",
                )
            ],
        )
        wb.write_config(
            addresses=["10.9.0.2/24", "fd00:9::2/64"],
            listen_port=51821,
            peers=[PeerSpec(wa.keys.public, ["10.9.0.1/32", "fd00:9::1/128"])],
        )
        wa.start("--offload")
        wb.start("--no-offload", "--queues", "2")
        assert udp_ping(a, b, "10.9.0.2") == 3
        assert udp_ping(b, a, "fd00:9::1") == 3
        assert _tcp_received(_iperf(a, b, "10.9.0.2")) > 1_000_000
        assert _tcp_received(_iperf(a, b, "fd00:9::2", "-R")) > 1_000_000
        # The underlay is IPv6 only: wb learned wa's v6 endpoint from the handshake.
        assert wb.dump()[1][0].endpoint == "[fd01::1]:51820"


def _lone_wiretun(a: NetNS, wt: WiretunPeer) -> None:
    wt.write_config(
        addresses=["10.9.0.1/24"],
        peers=[
            PeerSpec(
                WireguardGoPeer(a).keys.public,
                ["10.9.0.0/24", "0.0.0.0/0"],
                endpoint="192.168.241.2:1",
            )
        ],
    )


def test_teardown_on_sigterm_and_on_lost_socket_or_device(topology: Topology) -> None:
    a, _ = _two_namespaces(topology)
    for trigger in ("sigterm", "socket", "device"):
        with WiretunPeer(a) as wt:
            _lone_wiretun(a, wt)
            wt.start()
            assert FWMARK in a.run("ip", "rule")
            assert "default" in a.run("ip", "route", "show", "table", TABLE)
            assert wt.proc is not None
            if trigger == "sigterm":
                wt.proc.send_signal(signal.SIGTERM)
            elif trigger == "socket":
                os.unlink(wt.socket_path)
            else:
                a.run("ip", "link", "del", wt.name)
            assert wt.proc.wait(15) == 0, wt.log_text()
            _wiretun_gone(a, wt)


def test_background_and_down(topology: Topology) -> None:
    a, _ = _two_namespaces(topology)
    with WiretunPeer(a) as wt:
        _lone_wiretun(a, wt)
        out = a.run(*wt.command("up", wt.config_path, "--background"), timeout=30)
        assert f"{wt.name} is up" in out
        assert os.path.exists(wt.pid_path) and os.path.exists(wt.socket_path)
        assert wt.name in a.run("ip", "-o", "link")
        assert wt.dump()[0][1] == wt.keys.public
        # `down` works from anywhere: the pid file is global, like the socket.
        subprocess.run(wt.command("down", wt.name), check=True, timeout=30)
        _wiretun_gone(a, wt)
        gone = subprocess.run(
            wt.command("down", wt.name), capture_output=True, text=True, check=False
        )
        assert gone.returncode == 1
        assert "no running wiretun" in gone.stderr


def test_second_instance_on_the_same_name_is_refused(topology: Topology) -> None:
    a, _ = _two_namespaces(topology)
    with WiretunPeer(a) as wt:
        _lone_wiretun(a, wt)
        wt.start()
        again = subprocess.run(
            ["ip", "netns", "exec", a.name, *wt.command("up", wt.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert again.returncode == 1
        assert "already running" in again.stderr
        assert wt.proc is not None and wt.proc.poll() is None  # the first one is untouched
        assert wt.dump()[0][1] == wt.keys.public


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("[Interface]\nPrivateKey = nope\n", ":2: [Interface] PrivateKey"),
        ("[Interface]\nPrivateKey = {key}\n[Peer]\nAllowedIPs = 10.0.0.0/8\n", ":3"),
    ],
)
def test_config_error_is_one_line_and_exit_2(tmp_path: Any, body: str, where: str) -> None:
    path = tmp_path / "wtbad0.conf"
    path.write_text(body.format(key=KeyPair.generate().private))
    path.chmod(0o600)
    proc = subprocess.run(
        wiretun_command("up", str(path)),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("wiretun up: ") and f"{path}{where}" in lines[0]
