"""examples/embedded_service.py, run as a user would: a Tunnel inside a plain asyncio
service, against Debian's wireguard-go in another namespace; the service's echo is reached
through the tunnel and its reports come from `Tunnel.stats()`; and its argument and
configuration errors, one line each (no root needed for those)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any, cast

import pytest

from wiretun.lab.netns import Topology
from wiretun.lab.peers import PeerSpec, WireguardGoPeer, WiretunPeer, have_wireguard_go

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "embedded_service.py"


def _next_report(out: IO[str]) -> dict[str, Any]:
    """The example's next JSON line (the test's timeout bounds the wait)."""
    line = out.readline()
    if not line:
        raise EOFError("the example exited")
    report: dict[str, Any] = json.loads(line)
    return report


def _example(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip


def test_help_and_bad_arguments_are_one_line_without_a_tunnel(tmp_path: Path) -> None:
    shown = _example("--help")
    assert shown.returncode == 0 and "--listen ADDRESS:PORT" in shown.stdout
    for listen in ("nope", "10.9.0.1", "10.9.0.1:0", "[fd00::1]:70000"):
        bad = _example(str(tmp_path / "wg0.conf"), "--listen", listen)
        assert bad.returncode == 2
        assert bad.stderr.splitlines()[-1] == (
            f"embedded_service.py: error: argument --listen: {listen!r} is not ADDRESS:PORT "
            "(e.g. 10.9.0.1:7000)"
        )
    missing = _example(str(tmp_path / "wg0.conf"), "--listen", "10.9.0.1:7000")
    assert missing.returncode == 2
    assert missing.stderr == (
        f"embedded_service.py: {tmp_path}/wg0.conf: cannot read: No such file or directory\n"
    )
    (tmp_path / "wg1.conf").write_text("[Interface]\nPrivateKey = nope\n")
    broken = _example(str(tmp_path / "wg1.conf"), "--listen", "10.9.0.1:7000")
    assert broken.returncode == 2 and len(broken.stderr.splitlines()) == 1, broken.stderr
    assert "Traceback" not in broken.stderr and "PrivateKey" in broken.stderr


@pytest.mark.root
@pytest.mark.skipif(not have_wireguard_go(), reason="needs wireguard-go and wg")
def test_the_embedded_service_answers_through_the_tunnel_and_reports_stats(
    topology: Topology, tmp_path: Path
) -> None:
    a, b = topology.netns(), topology.netns()
    topology.veth(a, b, "192.168.241.1/24", "192.168.241.2/24")
    with WireguardGoPeer(b).start() as wg, WiretunPeer(a) as wt:
        # WiretunPeer only writes the config here: the example runs the tunnel.
        config = wt.write_config(
            addresses=["10.9.0.1/24"],
            listen_port=51820,
            peers=[PeerSpec(wg.keys.public, ["10.9.0.2/32"])],
        )
        wg.configure(listen_port=51821)
        wg.add_peer(wt.keys.public, allowed_ips=["10.9.0.1/32"], endpoint="192.168.241.1:51820")
        wg.link_up(["10.9.0.2/24"])
        errors = tmp_path / "stderr"
        errors_file = errors.open("w")
        proc = a.popen(
            sys.executable, str(EXAMPLE), config, "--listen", "10.9.0.1:7000", "--every", "0.5",
            stdout=subprocess.PIPE, stderr=errors_file, text=True,
        )  # fmt: skip
        try:
            out = cast(IO[str], proc.stdout)  # text=True: popen's annotation says bytes
            up = _next_report(out)
            assert up == {
                "event": "up", "name": wt.name, "port": 51820, "public_key": wt.keys.public
            }  # fmt: skip
            # From wireguard-go's side: UDP to the service, through the tunnel.
            answers = b.run(
                sys.executable, "-c",
                "import socket\n"
                "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)\n"
                "n = 0\n"
                "for i in range(3):\n"
                "    s.sendto(b'ping %d' % i, ('10.9.0.1', 7000))\n"
                "    n += s.recv(100) == b'ping %d' % i\n"
                "print(n)",
                timeout=30,
            )  # fmt: skip
            assert answers.strip() == "3"
            report = _next_report(out)
            while report["echoed"] < 3:
                report = _next_report(out)
            (peer,) = report["peers"]
            assert peer["public_key"] == wg.keys.public
            assert peer["rx_bytes"] > 0 and peer["tx_bytes"] > 0
            assert 0 <= peer["handshake_age"] < 30
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0, errors.read_text()
            last = json.loads(out.read().strip().splitlines()[-1])
            assert last["event"] == "down" and last["echoed"] == 3
            assert wt.name not in a.run("ip", "-o", "link")  # the example's tunnel is gone
            # An address that is not the tunnel's: one line, exit 1, the tunnel taken down.
            elsewhere = subprocess.run(
                ["ip", "netns", "exec", a.name, sys.executable, str(EXAMPLE), config,
                 "--listen", "10.9.0.5:7000"],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            assert elsewhere.returncode == 1
            assert elsewhere.stderr == (
                "embedded_service.py: cannot listen on 10.9.0.5 port 7000: "
                "Cannot assign requested address\n"
            )
            assert wt.name not in a.run("ip", "-o", "link")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            out.close()
            errors_file.close()
