"""A real WireGuard peer for tests: Debian's wireguard-go in a namespace, configured with `wg`."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from wiretun.testing.netns import NetNS, unique_name

SOCKET_DIR = "/var/run/wireguard"


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


def have_wireguard_go() -> bool:
    return shutil.which("wireguard-go") is not None and shutil.which("wg") is not None


@dataclass
class PeerDump:
    """One peer line of `wg show NAME dump`."""

    public_key: str
    preshared_key: str
    endpoint: str
    allowed_ips: list[str]
    latest_handshake: int
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: str


def parse_dump(text: str) -> tuple[list[str], list[PeerDump]]:
    """Split `wg show NAME dump` into the interface fields and its peers."""
    lines = [ln.split("\t") for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        raise ValueError("empty wg dump")
    peers = [
        PeerDump(
            public_key=f[0],
            preshared_key=f[1],
            endpoint=f[2],
            allowed_ips=[] if f[3] == "(none)" else f[3].split(","),
            latest_handshake=int(f[4]),
            rx_bytes=int(f[5]),
            tx_bytes=int(f[6]),
            persistent_keepalive=f[7],
        )
        for f in lines[1:]
    ]
    return lines[0], peers


@dataclass
class WireguardGoPeer:
    """wireguard-go running as interface `name` inside `ns`; `stop()` removes it all.

    Interface names are global here because UAPI sockets live in one shared directory.
    """

    ns: NetNS
    name: str = field(default_factory=lambda: unique_name("wgg"))
    keys: KeyPair = field(default_factory=KeyPair.generate)
    proc: subprocess.Popen[bytes] | None = None
    _log: tempfile._TemporaryFileWrapper[bytes] | None = None

    @property
    def socket_path(self) -> str:
        return f"{SOCKET_DIR}/{self.name}.sock"

    def start(self, *, timeout: float = 10.0) -> WireguardGoPeer:
        """Start wireguard-go in the foreground and wait for its UAPI socket."""
        self._log = tempfile.NamedTemporaryFile(prefix=f"{self.name}-", suffix=".log")  # noqa: SIM115
        env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1", LOG_LEVEL="error")
        self.proc = self.ns.popen(
            "wireguard-go",
            "-f",
            self.name,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.socket_path):
            if self.proc.poll() is not None:
                raise RuntimeError(f"wireguard-go {self.name} exited: {self.log_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"wireguard-go {self.name}: no UAPI socket after {timeout}s")
            time.sleep(0.02)
        return self

    def log_text(self) -> str:
        if self._log is None:
            return ""
        with open(self._log.name, "rb") as f:
            return f.read().decode(errors="replace")

    def wg(self, *args: str, stdin: str | None = None) -> str:
        """Run `wg ARGS` inside the namespace (the UAPI socket is found by name)."""
        cmd = ["ip", "netns", "exec", self.ns.name, "wg", *args]
        proc = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, timeout=15, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def configure(self, *, listen_port: int | None = None, fwmark: int | None = None) -> None:
        """Set our private key, and optionally the listen port and fwmark."""
        args = ["set", self.name, "private-key", "/dev/stdin"]
        if listen_port is not None:
            args += ["listen-port", str(listen_port)]
        if fwmark is not None:
            args += ["fwmark", hex(fwmark)]
        self.wg(*args, stdin=self.keys.private + "\n")

    def add_peer(
        self,
        public_key: str,
        *,
        allowed_ips: Sequence[str],
        endpoint: str | None = None,
        preshared_key: str | None = None,
        persistent_keepalive: int | None = None,
    ) -> None:
        args = ["set", self.name, "peer", public_key, "allowed-ips", ",".join(allowed_ips)]
        if endpoint is not None:
            args += ["endpoint", endpoint]
        if persistent_keepalive is not None:
            args += ["persistent-keepalive", str(persistent_keepalive)]
        stdin = None
        if preshared_key is not None:
            args += ["preshared-key", "/dev/stdin"]
            stdin = preshared_key + "\n"
        self.wg(*args, stdin=stdin)

    def remove_peer(self, public_key: str) -> None:
        self.wg("set", self.name, "peer", public_key, "remove")

    def link_up(
        self, addresses: Iterable[str], *, mtu: int = 1420, routes: Iterable[str] = ()
    ) -> None:
        """Give the interface its addresses (CIDR), set the MTU, bring it up, add routes."""
        for addr in addresses:
            self.ns.run("ip", "addr", "add", addr, "dev", self.name, "nodad")
        self.ns.run("ip", "link", "set", self.name, "mtu", str(mtu), "up")
        for route in routes:
            self.ns.run("ip", "route", "replace", route, "dev", self.name)

    def dump(self) -> tuple[list[str], list[PeerDump]]:
        return parse_dump(self.wg("show", self.name, "dump"))

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop wireguard-go (SIGTERM, then SIGKILL) and remove what it leaves behind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.proc = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        self.ns.run("ip", "link", "del", self.name, check=False)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> WireguardGoPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def udp_ping(
    client: NetNS, server: NetNS, server_addr: str, *, count: int = 3, timeout: float = 5.0
) -> int:
    """Send `count` UDP probes from `client` to an echo socket in `server` at `server_addr`;
    return how many came back (the image has no ping(8); sockets keep their namespace)."""
    family = socket.AF_INET6 if ":" in server_addr else socket.AF_INET
    with server.enter():
        srv = socket.socket(family, socket.SOCK_DGRAM)
    with client.enter():
        cli = socket.socket(family, socket.SOCK_DGRAM)
    answered = 0
    try:
        srv.bind((server_addr, 0))
        port = srv.getsockname()[1]
        srv.settimeout(timeout)
        cli.settimeout(timeout)
        for i in range(count):
            probe = f"probe {i}".encode()
            cli.sendto(probe, (server_addr, port))
            try:
                data, peer = srv.recvfrom(2048)
                srv.sendto(data, peer)
                if cli.recv(2048) == probe:
                    answered += 1
            except TimeoutError:
                continue
    finally:
        srv.close()
        cli.close()
    return answered
