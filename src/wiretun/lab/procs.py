"""What tests and the benchmark both need to run WireGuard peers: keys, wg-quick files,
wireguard-go started until its UAPI socket exists, and stopping a process for good."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from wiretun.lab.netns import NetNS

SOCKET_DIR = "/var/run/wireguard"
WG_GO_ENV = "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD"  # else wireguard-go refuses
START_TIMEOUT = 10.0


class StartError(RuntimeError):
    """A process did not come up; the message ends with the tail of its output."""


@dataclass(frozen=True)
class KeyPair:
    """A Curve25519 key pair in wg's base64 form."""

    private: str
    public: str

    @classmethod
    def generate(cls) -> KeyPair:
        key = X25519PrivateKey.generate()
        priv = key.private_bytes_raw()
        pub = key.public_key().public_bytes_raw()
        return cls(base64.b64encode(priv).decode(), base64.b64encode(pub).decode())


def generate_psk() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@dataclass(frozen=True)
class PeerSpec:
    """One [Peer] of a wg-quick file."""

    public_key: str
    allowed_ips: Sequence[str]
    endpoint: str | None = None
    preshared_key: str | None = None
    persistent_keepalive: int | None = None


def wg_quick_config(
    private_key: str,
    *,
    addresses: Sequence[str],
    peers: Sequence[PeerSpec],
    listen_port: int | None = None,
    mtu: int | None = None,
    extra: str = "",
) -> str:
    """The text of a wg-quick file; `extra` is added verbatim to [Interface]."""
    lines = ["[Interface]", f"PrivateKey = {private_key}"]
    if listen_port is not None:
        lines.append(f"ListenPort = {listen_port}")
    if addresses:
        lines.append(f"Address = {', '.join(addresses)}")
    if mtu is not None:
        lines.append(f"MTU = {mtu}")
    if extra:
        lines.append(extra)
    for p in peers:
        lines += ["", "[Peer]", f"PublicKey = {p.public_key}"]
        lines.append(f"AllowedIPs = {', '.join(p.allowed_ips)}")
        if p.endpoint is not None:
            lines.append(f"Endpoint = {p.endpoint}")
        if p.preshared_key is not None:
            lines.append(f"PresharedKey = {p.preshared_key}")
        if p.persistent_keepalive is not None:
            lines.append(f"PersistentKeepalive = {p.persistent_keepalive}")
    return "\n".join(lines) + "\n"


def write_secret(path: str | Path, text: str) -> None:
    """Write a file that holds keys: mode 0600 from the start (wiretun warns otherwise)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def output_tail(path: str | Path, limit: int = 800) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip()
    except OSError:
        return "(no output)"
    return text[-limit:] if text else "(no output)"


def launch_wireguard_go(
    ns: NetNS,
    name: str,
    output: IO[bytes],
    *,
    timeout: float = START_TIMEOUT,
    log_level: str = "error",
) -> subprocess.Popen[bytes]:
    """Start `wireguard-go -f NAME` in `ns` and return once its UAPI socket exists.

    `ip netns exec` and `env` exec in place, so the pid is wireguard-go's own; its own
    session keeps a terminal's Ctrl-C away from it, so the caller decides when it stops.
    Raises StartError (after stopping it) if it exits or has no socket within `timeout`.
    """
    proc = ns.popen(
        "env", f"{WG_GO_ENV}=1", f"LOG_LEVEL={log_level}", "wireguard-go", "-f", name,
        stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    sock = os.path.join(SOCKET_DIR, f"{name}.sock")
    deadline = time.monotonic() + timeout
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            code = proc.poll()
            stop_process(proc)
            why = f"exited with {code}" if code is not None else f"no {sock} after {timeout:g} s"
            raise StartError(f"wireguard-go {name} {why}: {output_tail(output.name)}")
        time.sleep(0.02)
    return proc


def stop_process(
    proc: subprocess.Popen[bytes], grace: float = 5.0, sig: int = signal.SIGTERM
) -> int:
    """`sig` (SIGTERM), then SIGKILL after `grace` seconds; always reaps; the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
