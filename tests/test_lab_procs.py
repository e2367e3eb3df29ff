"""The shared peer helpers (wiretun.lab.procs) used by the tests and the benchmark:
keys, wg-quick files, secret files, stopping a process."""

from __future__ import annotations

import base64
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from wiretun.lab.procs import (
    KeyPair,
    PeerSpec,
    generate_psk,
    output_tail,
    stop_process,
    wg_quick_config,
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
