"""Security posture (issue #8) of a live daemon: the UAPI socket is 0600 in a 0755 directory;
no private or preshared key reaches the logs of `wiretun -vv up` through a handshake with
wireguard-go, `wg set` of new keys and `wg show`; a world-readable config is warned about;
and no MAC, tag or cookie is compared with `==` anywhere in the protocol core."""

from __future__ import annotations

import ast
import base64
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import wiretun.wireguard
from wiretun.lab.netns import Topology
from wiretun.lab.peers import (
    SOCKET_DIR,
    KeyPair,
    PeerSpec,
    WireguardGoPeer,
    WiretunPeer,
    generate_psk,
    have_wireguard_go,
    udp_ping,
)

SECRET_NAME = re.compile(r"mac|tag|cookie", re.IGNORECASE)


def _forms(secret_b64: str) -> list[str]:
    """The text forms a leaked key could take: base64 (with and without padding), hex."""
    raw = base64.b64decode(secret_b64)
    return [secret_b64, secret_b64.rstrip("="), raw.hex(), raw.hex().upper(), repr(raw)[2:-1]]


@pytest.mark.root
@pytest.mark.skipif(not have_wireguard_go(), reason="needs wireguard-go and wg")
def test_live_daemon_keeps_its_secrets(topology: Topology) -> None:
    a, b = topology.netns(), topology.netns()
    topology.veth(a, b, "192.168.241.1/24", "192.168.241.2/24")
    psk, new_psk, new_key = generate_psk(), generate_psk(), KeyPair.generate()
    with WireguardGoPeer(b).start() as wg, WiretunPeer(a) as wt:
        wg.configure(listen_port=51821)
        wg.add_peer(wt.keys.public, allowed_ips=["10.9.0.1/32"], preshared_key=psk)
        wg.link_up(["10.9.0.2/24"])
        path = wt.write_config(
            addresses=["10.9.0.1/24"],
            peers=[
                PeerSpec(
                    wg.keys.public,
                    ["10.9.0.2/32"],
                    endpoint="192.168.241.2:51821",
                    preshared_key=psk,
                )
            ],
        )
        os.chmod(path, 0o644)  # world-readable, with a private key in it
        wt.start(verbose=2)

        # The UAPI socket: 0600, root's, in a root-owned 0755 directory.
        sock = os.lstat(wt.socket_path)
        assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o600
        assert sock.st_uid == 0
        run_dir = os.stat(SOCKET_DIR)
        assert stat.S_IMODE(run_dir.st_mode) == 0o755 and run_dir.st_uid == 0

        # No core file can hold the keys (harden_process; PR_SET_DUMPABLE has no /proc view).
        assert wt.proc is not None
        limits = Path(f"/proc/{wt.proc.pid}/limits").read_text()
        assert [ln.split()[4:6] for ln in limits.splitlines() if ln.startswith("Max core")] == [
            ["0", "0"]
        ]

        assert udp_ping(a, b, "10.9.0.2") == 3  # a full handshake with the psk
        assert wt.dump()[0][0] == wt.keys.private  # a UAPI get carries it: must not be logged
        wt.wg("set", wt.name, "peer", wg.keys.public, "preshared-key", "/dev/stdin", stdin=new_psk)
        wt.wg("set", wt.name, "private-key", "/dev/stdin", stdin=new_key.private)
        (peer,) = wt.dump()[1]
        assert peer.preshared_key == new_psk  # the sets were applied, not ignored
        assert wt.dump()[0][1] == new_key.public
        assert wt.stop() == 0

        log = wt.log_text()
        print(f"{len(log.splitlines())} log lines, {log.count(' DEBUG ')} at DEBUG")
        assert " DEBUG " in log  # we did read a debug-level log
        assert "handshake" in log.lower()
        assert "readable by group or others (mode 0644)" in log
        for secret in (wt.keys.private, new_key.private, psk, new_psk):
            for form in _forms(secret):
                assert form not in log, f"secret form {form[:6]}... in the log"


@pytest.mark.root
@pytest.mark.skipif(not have_wireguard_go(), reason="needs wireguard-go and wg")
def test_background_start_runs_no_code_from_the_working_directory(
    topology: Topology, tmp_path: Path
) -> None:
    """Regression (#15): `wiretun up --background` re-executed `python -m wiretun`, which
    imports a `wiretun/` from the working directory first: a fake one ran as root. Started
    from such a directory (with a relative config path), the daemon runs our code, in `/`."""
    a = topology.netns()
    marker = tmp_path / "PWNED"
    for package in ("wiretun", "pyroute2", "cryptography"):
        (tmp_path / package).mkdir()
        for module in ("__init__.py", "__main__.py"):
            (tmp_path / package / module).write_text(f"open({str(marker)!r}, 'w').close()\n")
    with WiretunPeer(a) as wt:
        path = wt.write_config(
            addresses=["10.9.0.1/24"],
            peers=[PeerSpec(KeyPair.generate().public, ["10.9.0.2/32"])],
        )
        (tmp_path / f"{wt.name}.conf").write_text(Path(path).read_text())
        os.chmod(tmp_path / f"{wt.name}.conf", 0o600)
        # `python -P -m wiretun` is the installed `wiretun` script: the parent itself does not
        # look in the working directory, only the child it re-executed did.
        cmd = [sys.executable, "-P", "-m", "wiretun", "up", f"{wt.name}.conf", "--background"]
        out = subprocess.run(["ip", "netns", "exec", a.name, *cmd], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        try:
            assert out.returncode == 0, out.stderr
            assert f"{wt.name} is up" in out.stdout
            assert not marker.exists(), "code from the working directory ran"
            pid = int(Path(wt.pid_path).read_text().split()[0])
            assert os.readlink(f"/proc/{pid}/cwd") == "/"
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert cmdline[1] == b"-I"
            assert str(tmp_path / f"{wt.name}.conf").encode() in cmdline  # made absolute
            assert wt.dump()[0][1] == wt.keys.public
        finally:
            subprocess.run([*wt.command("down", wt.name)], timeout=30, check=False)
        assert not os.path.exists(wt.socket_path)


def _identifiers(node: ast.AST) -> list[str]:
    """Names and attributes in an operand, except inside len(...) and ALL_CAPS constants."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "len":
        return []
    names: list[str] = []
    if isinstance(node, ast.Name):
        names.append(node.id)
    elif isinstance(node, ast.Attribute):
        names.append(node.attr)
    for child in ast.iter_child_nodes(node):
        names += _identifiers(child)
    return [n for n in names if not n.isupper()]


def _equality_on_secrets(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        if not any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            continue
        names = [n for operand in (node.left, *node.comparators) for n in _identifiers(operand)]
        if any(SECRET_NAME.search(n) for n in names):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_macs_tags_and_cookies_are_never_compared_with_eq() -> None:
    """MAC comparisons go through hmac.compare_digest; AEAD tags are checked inside
    OpenSSL (cryptography's ChaCha20Poly1305), so no Python code compares one."""
    assert _equality_on_secrets("ok = mac1 == expected\n")  # the check can fire
    assert not _equality_on_secrets("ok = len(mac1) == MAC_LEN and kind == MSG_COOKIE_REPLY\n")
    core = Path(wiretun.wireguard.__file__).parent
    offenders = {
        p.name: hits
        for p in sorted(core.glob("*.py"))
        if (hits := _equality_on_secrets(p.read_text()))
    }
    assert offenders == {}
    cookie = (core / "cookie.py").read_text()
    assert cookie.count("hmac.compare_digest(") == 2  # mac1 and mac2
