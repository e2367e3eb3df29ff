"""What the lab's peers and the benchmark both need to run WireGuard daemons: keys, wg-quick
files, one launcher per daemon kind that returns once the daemon is ready (`wiretun up` by
its readiness pipe, wireguard-go by its UAPI socket), and stopping a process for good."""

from __future__ import annotations

import base64
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from wiretun.lab.netns import NetNS
from wiretun.wireguard.crypto import KEY_LEN

SOCKET_DIR = "/var/run/wireguard"
WG_GO_ENV = "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD"  # else wireguard-go refuses
START_TIMEOUT = 10.0
READY = b"ready"  # what `wiretun up --ready-fd` writes once up


class StartError(RuntimeError):
    """A process did not come up; the message ends with the tail of its output."""


@dataclass(frozen=True)
class KeyPair:
    """A Curve25519 key pair in wg's base64 form."""

    private: str = field(repr=False)
    public: str

    @classmethod
    def generate(cls) -> KeyPair:
        key = X25519PrivateKey.generate()
        priv = key.private_bytes_raw()
        pub = key.public_key().public_bytes_raw()
        return cls(base64.b64encode(priv).decode(), base64.b64encode(pub).decode())


def generate_psk() -> str:
    return base64.b64encode(os.urandom(KEY_LEN)).decode()


@dataclass(frozen=True)
class PeerSpec:
    """One [Peer] of a wg-quick file."""

    public_key: str
    allowed_ips: Sequence[str]
    endpoint: str | None = None
    preshared_key: str | None = field(default=None, repr=False)
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


def wiretun_command(*args: str) -> list[str]:
    """argv for the wiretun CLI of this interpreter (the venv's, under pytest)."""
    return [sys.executable, "-m", "wiretun", *args]


def wireguard_go_command(
    name: str, *, binary: str = "wireguard-go", log_level: str = "error"
) -> list[str]:
    """argv for wireguard-go in the foreground as interface `name`. Debian's build refuses
    to start without WG_GO_ENV; upstream's only warns."""
    return ["env", f"{WG_GO_ENV}=1", f"LOG_LEVEL={log_level}", binary, "-f", name]


def _spawn(
    ns: NetNS, argv: Sequence[str], output: IO[bytes], pass_fds: Sequence[int] = ()
) -> subprocess.Popen[bytes]:
    # `ip netns exec` and `env` exec in place, so the pid is the daemon's own; its own
    # session keeps a terminal's Ctrl-C away from it, so the caller decides when it stops.
    return ns.popen(
        *argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
        pass_fds=tuple(pass_fds), start_new_session=True,
    )  # fmt: skip


def _failed(proc: subprocess.Popen[bytes], what: str, why: str, output: IO[bytes]) -> StartError:
    stop_process(proc)
    return StartError(f"{what} {why}: {output_tail(output.name)}")


def wait_ready(fd: int, proc: subprocess.Popen[bytes], timeout: float) -> str | None:
    """Read the readiness pipe `fd` until the daemon writes "ready" (None) or closes it
    unsaid, by exiting or otherwise, or `timeout` passes (then why not, as text)."""
    deadline = time.monotonic() + timeout
    said = b""
    while not said.startswith(READY):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return f"not up after {timeout:g} s"
        chunk = os.read(fd, 64)
        if not chunk:
            try:
                code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return "closed its readiness pipe without saying it is up"
            return f"exited with {code} before it was up"
        said += chunk
    return None


def launch_wiretun(
    ns: NetNS,
    argv: Sequence[str],
    output: IO[bytes],
    *,
    timeout: float = START_TIMEOUT,
    what: str = "wiretun up",
) -> subprocess.Popen[bytes]:
    """Start `argv` (a `wiretun up` command line) in `ns` and return once it says on its
    readiness pipe that the interface is up: device, addresses, routes, UAPI socket and pid
    file are then all in place. Its output, also after that, goes to `output`.

    Raises StartError (after stopping it) if it exits first or is not up within `timeout`.
    """
    r, w = os.pipe()
    try:
        proc = _spawn(ns, [*argv, "--ready-fd", str(w), "--keep-output"], output, (w,))
    finally:
        os.close(w)  # ours: only the daemon's copy must keep the pipe open
    try:
        why = wait_ready(r, proc, timeout)
    finally:
        os.close(r)
    if why is not None:
        raise _failed(proc, what, why, output)
    return proc


def uapi_listening(path: str | Path) -> bool:
    """True once a process accepts connections on the UAPI socket `path`. The file appears
    at bind(), a moment before listen(): a `wg` that connected then would be refused."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    except TimeoutError:
        return True  # listening, with a full backlog
    finally:
        probe.close()
    return True


def launch_wireguard_go(
    ns: NetNS,
    name: str,
    output: IO[bytes],
    *,
    binary: str = "wireguard-go",
    timeout: float = START_TIMEOUT,
    log_level: str = "error",
) -> subprocess.Popen[bytes]:
    """Start wireguard-go in the foreground as interface `name` in `ns` and return once its
    UAPI socket accepts connections: wireguard-go has no readiness pipe, but it creates the
    TUN before it opens the socket, and serves the socket once it listens, so `wg set` and
    `ip link` can follow at once.

    Raises StartError (after stopping it) if it exits first or is not ready within `timeout`.
    """
    proc = _spawn(ns, wireguard_go_command(name, binary=binary, log_level=log_level), output)
    sock = os.path.join(SOCKET_DIR, f"{name}.sock")
    deadline = time.monotonic() + timeout
    while not uapi_listening(sock):
        code = proc.poll()
        if code is not None:
            raise _failed(proc, f"wireguard-go {name}", f"exited with {code}", output)
        if time.monotonic() > deadline:
            raise _failed(proc, f"wireguard-go {name}", f"no {sock} after {timeout:g} s", output)
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
