"""What `wiretun up` says, as a user sees it: the "[#]" lines of what it set up, keys in
base64 in its log, one line without CAP_NET_ADMIN, "already running" before any UDP bind,
config warnings once with --background, a UTF-8 BOM accepted."""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path

import pytest

from wiretun.lab.netns import NetNS, Topology
from wiretun.lab.peers import (
    KeyPair,
    PeerSpec,
    WireguardGoPeer,
    WiretunPeer,
    have_wireguard_go,
    udp_ping,
    wiretun_command,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not have_wireguard_go(), reason="needs wireguard-go and wg"),
]


def _pair(topology: Topology) -> tuple[NetNS, NetNS]:
    a, b = topology.netns(), topology.netns()
    topology.veth(a, b, "192.168.241.1/24", "192.168.241.2/24")
    return a, b


def _run(ns: NetNS, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns.name, *argv],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_foreground_up_says_what_it_set_up_and_logs_keys_in_base64(topology: Topology) -> None:
    a, b = _pair(topology)
    with WireguardGoPeer(b).start() as wg, WiretunPeer(a) as wt:
        wg.configure(listen_port=51821)
        wg.add_peer(wt.keys.public, allowed_ips=["10.9.0.1/32"])
        wg.link_up(["10.9.0.2/24"])
        wt.write_config(
            addresses=["10.9.0.1/24"],
            listen_port=51820,
            peers=[
                PeerSpec(
                    wg.keys.public, ["10.9.0.2/32", "10.77.0.0/16"], endpoint="192.168.241.2:51821"
                )
            ],
        )
        wt.start()
        assert udp_ping(a, b, "10.9.0.2") == 3
        log = wt.log_text()
        steps = [ln.removeprefix("[#] ") for ln in log.splitlines() if ln.startswith("[#] ")]
        assert f"uapi /var/run/wireguard/{wt.name}.sock" in steps
        assert "listen port 51820" in steps
        assert f"address add 10.9.0.1/24 dev {wt.name}" in steps
        assert any(re.fullmatch(rf"mtu \d+ up dev {wt.name}", s) for s in steps)
        assert f"route add 10.77.0.0/16 dev {wt.name}" in steps  # 10.9.0.2/32: covered
        assert (
            f"peer {wg.keys.public} endpoint 192.168.241.2:51821 allowed ips "
            "10.9.0.2/32,10.77.0.0/16" in steps
        )
        assert wt.stop() == 0
        log = wt.log_text()
        # The handshake event as logged (-v): the key as `wg` shows it, never bytes or hex.
        assert f"HandshakeCompleted(public_key={wg.keys.public}" in log
        assert "public_key=b'" not in log
        assert base64.b64decode(wg.keys.public).hex() not in log


def test_without_cap_net_admin_one_line_says_so(tmp_path: Path) -> None:
    wt_keys = KeyPair.generate()
    path = os.path.join(str(tmp_path), "wtcap0.conf")
    with open(path, "w") as f:
        f.write(f"[Interface]\nPrivateKey = {wt_keys.private}\nAddress = 10.9.0.1/24\n")
    os.chmod(path, 0o600)
    proc = subprocess.run(
        ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin",
         *wiretun_command("up", path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr == (
        "wiretun up: needs CAP_NET_ADMIN to create the TUN device and set its routes "
        "(run it as root)\n"
    )


def test_already_running_is_found_before_the_udp_bind(topology: Topology) -> None:
    a, _ = _pair(topology)
    with WiretunPeer(a) as wt:
        wt.write_config(addresses=["10.9.0.1/24"], listen_port=51820, peers=[])
        wt.start()
        again = _run(a, wt.command("up", wt.config_path))
        assert again.returncode == 1
        lines = [ln for ln in again.stderr.splitlines() if not ln.startswith("[#] ")]
        assert len(lines) == 1 and lines[0].startswith(f"wiretun up: {wt.name} is already running")
        assert "bind" not in again.stderr  # the port the first one holds was never tried
        assert wt.proc is not None and wt.proc.poll() is None


def test_background_warns_once_and_a_bom_is_accepted(topology: Topology) -> None:
    a, _ = _pair(topology)
    with WiretunPeer(a) as wt:
        path = wt.write_config(addresses=["10.9.0.1/24"], peers=[])
        with open(path, "rb") as f:
            text = f.read()
        with open(path, "wb") as f:
            f.write(b"\xef\xbb\xbf" + text)  # as a Windows editor saves it
        os.chmod(path, 0o644)  # readable by others: the warning
        up = _run(a, wt.command("up", path, "--background"))
        try:
            assert up.returncode == 0, up.stderr
            warnings = [ln for ln in up.stderr.splitlines() if "warning:" in ln]
            assert len(warnings) == 1 and "chmod 600" in warnings[0], up.stderr
            assert wt.dump()[0][1] == wt.keys.public
        finally:
            subprocess.run(wt.command("down", wt.name), timeout=30, check=False)
