"""`wiretun show [--json]` and `wiretun up --metrics` against a live tunnel: wiretun up and
Debian's wireguard-go in two namespaces; the counters are read through these, not the logs."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import urllib.request
from typing import Any

import pytest

from wiretun.lab.netns import NetNS, Topology
from wiretun.lab.peers import (
    PeerSpec,
    WireguardGoPeer,
    WiretunPeer,
    have_wireguard_go,
    udp_ping,
    wiretun_command,
)
from wiretun.wireguard.stats import DROP_REASONS

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not have_wireguard_go(), reason="needs wireguard-go and wg"),
]


def _wiretun(ns: NetNS, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns.name, *wiretun_command(*args)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def _free_port(ns: NetNS) -> int:
    with ns.enter():
        s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
    finally:
        s.close()


def _tunnel(topology: Topology, wg: WireguardGoPeer, wt: WiretunPeer, *args: str) -> NetNS:
    a, b = wt.ns, wg.ns
    wg.configure(listen_port=51821)
    wg.add_peer(wt.keys.public, allowed_ips=["10.9.0.1/32"])
    wg.link_up(["10.9.0.2/24"])
    wt.write_config(
        addresses=["10.9.0.1/24"],
        peers=[
            PeerSpec(
                wg.keys.public,
                ["10.9.0.2/32"],
                endpoint="192.168.241.2:51821",
                persistent_keepalive=25,
            )
        ],
    )
    wt.start(*args)
    assert udp_ping(a, b, "10.9.0.2") == 3
    return a


def test_show_json_and_text_against_a_live_tunnel(topology: Topology) -> None:
    a, b = topology.netns(), topology.netns()
    topology.veth(a, b, "192.168.241.1/24", "192.168.241.2/24")
    with WireguardGoPeer(b).start() as wg, WiretunPeer(a) as wt:
        _tunnel(topology, wg, wt)
        shown = _wiretun(a, "show", wt.name, "--json")
        assert shown.returncode == 0, shown.stderr
        info: dict[str, Any] = json.loads(shown.stdout)
        assert info["name"] == wt.name
        assert info["public_key"] == wt.keys.public
        assert "private" not in shown.stdout.lower()  # never the private key
        (peer,) = info["peers"]
        assert peer["public_key"] == wg.keys.public
        assert peer["endpoint"] == "192.168.241.2:51821"
        assert peer["allowed_ips"] == ["10.9.0.2/32"]
        assert peer["persistent_keepalive"] == 25
        assert peer["latest_handshake"] > 0 and peer["rx_bytes"] > 0 and peer["tx_bytes"] > 0
        stats = info["stats"]
        assert stats["data_path"] in ("native", "pure")
        assert set(stats["core_drops"]) == set(DROP_REASONS)
        (counters,) = stats["peers"]
        assert counters["public_key"] == wg.keys.public and counters["has_session"]
        assert counters["rx_bytes"] >= peer["rx_bytes"] > 0  # the later snapshot
        assert stats["handshakes_completed"] >= 1
        assert stats["packets_opened"] >= 3  # the three echoes came back through the core
        assert stats["udp"]["datagrams_received"] >= 4  # handshake response + echoes
        assert stats["loop"]["packets_to_tun"] >= 3

        # Every interface with a socket, wireguard-go's too (no counters). The socket dir is
        # the host's: other tests' interfaces may be listed (or fail) alongside.
        text = _wiretun(a, "show")
        assert f"interface: {wt.name}" in text.stdout
        assert f"interface: {wg.name}" in text.stdout
        assert f"peer: {wg.keys.public}" in text.stdout
        assert "  wiretun: data path" in text.stdout
        assert re.search(r"latest handshake: (Now|\d+ seconds? ago)", text.stdout)
        assert "drops: " in text.stdout
        # wireguard-go's device: wg's fields and a note; it was asked only `get=1` (the
        # stats request would have made it log "invalid UAPI operation" and hang up).
        wg_block = text.stdout.split(f"interface: {wg.name}\n", 1)[1].split("\ninterface: ")[0]
        assert "\n  note: not a `wiretun up` tunnel" in "\n" + wg_block
        assert "wiretun: data path" not in wg_block
        shown_wg = _wiretun(a, "show", wg.name, "--json")
        assert shown_wg.returncode == 0, shown_wg.stderr
        assert json.loads(shown_wg.stdout)["stats"] is None
        assert json.loads(shown_wg.stdout)["peers"][0]["public_key"] == wt.keys.public
        assert "ERROR" not in wg.log_text(), wg.log_text()

        gone = _wiretun(a, "show", "nosuchif0")
        assert gone.returncode == 1
        assert gone.stderr.startswith("wiretun show: nosuchif0: no device answers on ")


def test_metrics_endpoint_scraped_over_loopback_in_the_namespace(topology: Topology) -> None:
    a, b = topology.netns(), topology.netns()
    topology.veth(a, b, "192.168.241.1/24", "192.168.241.2/24")
    port = _free_port(a)
    with WireguardGoPeer(b).start() as wg, WiretunPeer(a) as wt:
        _tunnel(topology, wg, wt, "--metrics", f"127.0.0.1:{port}")
        with a.enter():
            # urllib opens its socket here, in the namespace (the address is its loopback).
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                body = response.read().decode()
        labels = f'interface="{wt.name}",public_key="{wg.keys.public}"'
        rx = re.search(rf"^wiretun_peer_receive_bytes_total\{{{re.escape(labels)}\}} (\S+)$",
                       body, re.M)  # fmt: skip
        assert rx is not None and float(rx.group(1)) > 0, body
        age = re.search(
            rf"^wiretun_peer_handshake_age_seconds\{{{re.escape(labels)}\}} (\S+)$", body, re.M
        )
        assert age is not None and 0 <= float(age.group(1)) < 60
        for reason in ("mac1", "replay", "decrypt"):
            assert (
                f'wiretun_drops_total{{interface="{wt.name}",layer="core",reason="{reason}"}} 0.0'
                in body
            )
        with a.enter(), pytest.raises(urllib.error.HTTPError) as missing:
            opener.open(f"http://127.0.0.1:{port}/nothing", timeout=10)
        assert missing.value.code == 404
        missing.value.close()  # it holds the response's socket
        assert wt.stop() == 0
