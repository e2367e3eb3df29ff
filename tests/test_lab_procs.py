"""The shared peer helpers (wiretun.lab.procs) used by the lab's peers and the benchmark:
keys, wg-quick files, secret files, command lines, waiting until a daemon is ready, stopping
a process. The launchers themselves need a namespace: the integration tests run them."""

from __future__ import annotations

import base64
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from wiretun.lab.procs import (
    KeyPair,
    PeerSpec,
    generate_psk,
    output_tail,
    stop_process,
    uapi_listening,
    wait_ready,
    wg_quick_config,
    wireguard_go_command,
    wiretun_command,
    write_secret,
)
from wiretun.tunnel.config import parse_config


def test_keypair_is_a_matching_x25519_pair() -> None:
    keys = KeyPair.generate()
    raw = base64.b64decode(keys.private)
    assert len(raw) == 32
    derived = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
    assert base64.b64decode(keys.public) == derived
    assert KeyPair.generate().private != keys.private
    assert len(base64.b64decode(generate_psk())) == 32


def test_wg_quick_config_parses_back() -> None:
    me, peer, psk = KeyPair.generate(), KeyPair.generate(), generate_psk()
    text = wg_quick_config(
        me.private,
        addresses=["10.9.0.1/24", "fd00:9::1/64"],
        listen_port=51820,
        mtu=1400,
        extra="Table = off",
        peers=[PeerSpec(peer.public, ["10.9.0.2/32"], "192.0.2.1:51821", psk, 25)],
    )
    config = parse_config(text, "wt0.conf")
    assert config.interface.listen_port == 51820 and config.interface.mtu == 1400
    assert config.interface.table == "off"
    assert [str(a) for a in config.interface.addresses] == ["10.9.0.1/24", "fd00:9::1/64"]
    (p,) = config.peers
    assert base64.b64encode(p.public_key).decode() == peer.public
    assert p.persistent_keepalive == 25 and p.preshared_key is not None


def test_write_secret_is_0600_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "k"
    write_secret(path, "secret\n")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text() == "secret\n"
    assert output_tail(path) == "secret" and output_tail(tmp_path / "none") == "(no output)"


def test_stop_process_kills_what_ignores_sigterm() -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print(1, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"1\n"  # handler installed
    assert stop_process(proc, grace=0.3) == -signal.SIGKILL
    proc.stdout.close()
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert stop_process(polite) == -signal.SIGTERM
    assert stop_process(polite) == -signal.SIGTERM  # already reaped: just the code


def _with_pipe(code: str) -> tuple[int, subprocess.Popen[bytes]]:
    """`code` run with the write end of a pipe as sys.argv[1]; the read end and the child."""
    r, w = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-c", code, str(w)], pass_fds=(w,))
    finally:
        os.close(w)
    return r, proc


def test_wait_ready_returns_when_the_daemon_says_ready_and_it_keeps_running() -> None:
    r, proc = _with_pipe(
        "import os, sys, time; fd = int(sys.argv[1]); os.write(fd, b're'); time.sleep(0.05)\n"
        "os.write(fd, b'ady\\n'); os.close(fd); time.sleep(60)"
    )
    try:
        assert wait_ready(r, proc, 10) is None  # "ready" in two writes is still "ready"
        assert proc.poll() is None
    finally:
        os.close(r)
        stop_process(proc)


def test_wait_ready_reports_an_exit_before_ready_and_a_silent_pipe() -> None:
    r, proc = _with_pipe("import sys; sys.exit(3)")
    try:
        assert wait_ready(r, proc, 10) == "exited with 3 before it was up"
    finally:
        os.close(r)
    r, proc = _with_pipe("import time; time.sleep(60)")
    try:
        start = time.monotonic()
        assert wait_ready(r, proc, 0.2) == "not up after 0.2 s"
        assert time.monotonic() - start < 5
    finally:
        os.close(r)
        stop_process(proc)
    r, proc = _with_pipe("import os, sys, time; os.close(int(sys.argv[1])); time.sleep(60)")
    try:
        assert wait_ready(r, proc, 0.3) == "closed its readiness pipe without saying it is up"
    finally:
        os.close(r)
        stop_process(proc)


def test_uapi_listening_needs_a_listening_socket_not_only_the_file(tmp_path: Path) -> None:
    path = tmp_path / "wt0.sock"
    assert not uapi_listening(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))  # the file exists from here: wireguard-go is not serving yet
        assert path.exists() and not uapi_listening(path)
        sock.listen(1)
        assert uapi_listening(path)
    finally:
        sock.close()


def test_command_lines() -> None:
    assert wiretun_command("up", "wt0.conf") == [sys.executable, "-m", "wiretun", "up", "wt0.conf"]
    assert wireguard_go_command("wgg1", binary="/opt/wg-go", log_level="debug") == [
        "env", "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1", "LOG_LEVEL=debug",
        "/opt/wg-go", "-f", "wgg1",
    ]  # fmt: skip
