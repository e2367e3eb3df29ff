"""wiretun-go behaves as wireguard-go does on its command line (what wg-quick and other stock
tools rely on): `wiretun-go NAME` daemonizes and returns once the TUN and UAPI socket exist,
`-f` stays in the foreground; it exits on SIGTERM/SIGINT, when its socket is removed and when
its device is deleted, and leaves nothing behind; a SIGKILLed one's stale socket does not
stop the next start. Each test runs in a namespace of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wiretun.lab.netns import NetNS, Topology, unique_name
from wiretun.lab.peers import KeyPair, have_wireguard_go

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not have_wireguard_go(), reason="needs wg"),
]

WIRETUN_GO = os.path.join(os.path.dirname(sys.executable), "wiretun-go")
RUN_DIR = "/var/run/wireguard"


class Go:
    def __init__(self, ns: NetNS) -> None:
        self.ns = ns
        self.name = unique_name("wgo")
        self.sock = f"{RUN_DIR}/{self.name}.sock"
        self.pid_file = f"{RUN_DIR}/{self.name}.pid"

    def pid(self) -> int:
        return int(Path(self.pid_file).read_text().split()[0])

    def has_link(self) -> bool:
        return self.name in self.ns.run("ip", "-br", "link")

    def wait_gone(self, pid: int, timeout: float = 10.0) -> None:
        """The process exited and took its device, socket and pid file with it."""
        deadline = time.monotonic() + timeout
        while os.path.exists(f"/proc/{pid}") or self.has_link() or os.path.exists(self.sock):
            assert time.monotonic() < deadline, f"wiretun-go {self.name} did not go away"
            time.sleep(0.05)
        assert not os.path.exists(self.pid_file)

    def cleanup(self) -> None:
        self.ns.run("ip", "link", "del", self.name, check=False)
        for path in (self.sock, self.pid_file, f"{RUN_DIR}/{self.name}.installed"):
            Path(path).unlink(missing_ok=True)


@pytest.fixture
def go(topology: Topology) -> Iterator[Go]:
    g = Go(topology.netns())
    yield g
    g.cleanup()  # the namespace's deletion kills what is still running in it


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_version_on_the_entry_point() -> None:
    out = subprocess.run([WIRETUN_GO, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("wiretun-go v")


def test_daemonizes_serves_uapi_and_exits_when_its_socket_is_removed(go: Go) -> None:
    # As wireguard-go: returns once the interface exists, the daemon in a session of its own
    # and not holding our stdout (`$(wiretun-go wg0)` or a pipe would hang otherwise).
    proc = subprocess.run(
        ["ip", "netns", "exec", go.ns.name, WIRETUN_GO, go.name],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    pid = go.pid()
    assert _alive(pid) and os.getsid(pid) == pid
    assert go.has_link() and os.path.exists(go.sock)
    # A bare device, then configured over UAPI by `wg`, as wg-quick does with wireguard-go.
    assert go.ns.run("wg", "show", go.name, "private-key").strip() == "(none)"
    keys, peer = KeyPair.generate(), KeyPair.generate()
    key_file = Path(f"/tmp/{go.name}.key")
    key_file.write_text(keys.private + "\n")
    try:
        go.ns.run(
            "wg", "set", go.name, "listen-port", "51999", "private-key", str(key_file),
            "peer", peer.public, "allowed-ips", "10.5.0.0/24",
        )  # fmt: skip
    finally:
        key_file.unlink()
    assert go.ns.run("wg", "show", go.name, "public-key").strip() == keys.public
    assert go.ns.run("wg", "show", go.name, "listen-port").strip() == "51999"
    assert peer.public in go.ns.run("wg", "show", go.name, "peers")
    os.unlink(go.sock)
    go.wait_gone(pid)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_foreground_stays_and_exits_on_a_signal(go: Go, sig: int, tmp_path: Path) -> None:
    log = tmp_path / "log"
    with log.open("wb") as out:
        proc = go.ns.popen(
            WIRETUN_GO, "-f", go.name, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            env=dict(os.environ, LOG_LEVEL="verbose"),
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not (os.path.exists(go.sock) and os.path.exists(go.pid_file)):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        pid = go.pid()
        assert pid == proc.pid and proc.poll() is None  # -f: this very process, still running
        assert os.getsid(pid) == os.getsid(0)
        os.kill(pid, sig)
        assert proc.wait(timeout=20) == 0
        go.wait_gone(pid)
        assert f"{go.name} up:" in log.read_text()  # LOG_LEVEL=verbose, as wireguard-go's
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_stale_socket_after_sigkill_does_not_stop_the_next_start(go: Go) -> None:
    """...and that next one exits when its device is deleted (`ip link del`)."""
    go.ns.run(WIRETUN_GO, go.name, timeout=20)
    pid = go.pid()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(pid) or go.has_link():  # the kernel drops the TUN with its last fd
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert os.path.exists(go.sock)  # left behind, as wireguard-go's would be
    go.ns.run(WIRETUN_GO, go.name, timeout=20)
    fresh = go.pid()
    assert fresh != pid and _alive(fresh)
    assert go.ns.run("wg", "show", go.name, "private-key").strip() == "(none)"
    go.ns.run("ip", "link", "del", go.name)
    go.wait_gone(fresh)
