"""Real WireGuard peers in a namespace: Debian's wireguard-go configured with `wg`, and
`wiretun up` from a config file we write; each `stop()` removes everything it made."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wiretun.lab.netns import NetNS, unique_name
from wiretun.lab.procs import (
    SOCKET_DIR,
    KeyPair,
    PeerSpec,
    generate_psk,
    launch_wireguard_go,
    launch_wiretun,
    stop_process,
    wg_quick_config,
    wiretun_command,
    write_secret,
)
from wiretun.wireguard.device import DEFAULT_MTU

# Re-exported: callers import these from here.
__all__ = ["SOCKET_DIR", "KeyPair", "PeerSpec", "generate_psk", "wiretun_command"]


def have_wireguard_go() -> bool:
    return shutil.which("wireguard-go") is not None and shutil.which("wg") is not None


@dataclass
class PeerDump:
    """One peer line of `wg show NAME dump`."""

    public_key: str
    preshared_key: str = field(repr=False)
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


def run_wg(ns: NetNS, *args: str, stdin: str | None = None) -> str:
    """Run `wg ARGS` inside `ns` (UAPI sockets are found by interface name); stdout, or
    RuntimeError with wg's stderr."""
    cmd = ["ip", "netns", "exec", ns.name, "wg", *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=15, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc.stdout


def read_log(log: tempfile._TemporaryFileWrapper[bytes] | None) -> str:
    """The text a process wrote to its log file so far ("" before it started)."""
    if log is None:
        return ""
    with open(log.name, "rb") as f:
        return f.read().decode(errors="replace")


class _Daemon:
    """What both kinds of peer daemon offer: their UAPI socket, their log, `wg` against them."""

    ns: NetNS
    name: str
    _log: tempfile._TemporaryFileWrapper[bytes] | None

    @property
    def socket_path(self) -> str:
        return f"{SOCKET_DIR}/{self.name}.sock"

    def log_text(self) -> str:
        return read_log(self._log)

    def wg(self, *args: str, stdin: str | None = None) -> str:
        return run_wg(self.ns, *args, stdin=stdin)

    def dump(self) -> tuple[list[str], list[PeerDump]]:
        return parse_dump(self.wg("show", self.name, "dump"))


@dataclass
class WireguardGoPeer(_Daemon):
    """wireguard-go running as interface `name` inside `ns`; `stop()` removes it all.

    Interface names are global here because UAPI sockets live in one shared directory.
    """

    ns: NetNS
    name: str = field(default_factory=lambda: unique_name("wgg"))
    keys: KeyPair = field(default_factory=KeyPair.generate)
    proc: subprocess.Popen[bytes] | None = None
    _log: tempfile._TemporaryFileWrapper[bytes] | None = None

    def start(self, *, timeout: float = 10.0) -> WireguardGoPeer:
        """Start wireguard-go in the foreground and wait for its UAPI socket (raises
        procs.StartError, a RuntimeError, and cleans up if it does not come up)."""
        self._log = tempfile.NamedTemporaryFile(prefix=f"{self.name}-", suffix=".log")  # noqa: SIM115
        try:
            self.proc = launch_wireguard_go(self.ns, self.name, self._log, timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

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
        self, addresses: Iterable[str], *, mtu: int = DEFAULT_MTU, routes: Iterable[str] = ()
    ) -> None:
        """Give the interface its addresses (CIDR), set the MTU, bring it up, add routes."""
        for addr in addresses:
            self.ns.run("ip", "addr", "add", addr, "dev", self.name, "nodad")
        self.ns.run("ip", "link", "set", self.name, "mtu", str(mtu), "up")
        for route in routes:
            self.ns.run("ip", "route", "replace", route, "dev", self.name)

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop wireguard-go (SIGTERM, then SIGKILL) and remove what it leaves behind."""
        if self.proc is not None:
            stop_process(self.proc, timeout)
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


@dataclass
class WiretunPeer(_Daemon):
    """`wiretun up` (the real CLI, in the foreground) inside `ns`, from a config we write.

    `stop()` sends SIGTERM and waits; it also cleans up if the process misbehaved.
    """

    ns: NetNS
    name: str = field(default_factory=lambda: unique_name("wtn"))
    keys: KeyPair = field(default_factory=KeyPair.generate)
    proc: subprocess.Popen[bytes] | None = None
    config_path: str = ""
    _dir: tempfile.TemporaryDirectory[str] | None = None
    _log: tempfile._TemporaryFileWrapper[bytes] | None = None

    @property
    def pid_path(self) -> str:
        return f"{SOCKET_DIR}/{self.name}.pid"

    def write_config(
        self,
        *,
        addresses: Sequence[str],
        peers: Sequence[PeerSpec],
        listen_port: int | None = None,
        mtu: int | None = None,
        extra: str = "",
    ) -> str:
        """Write NAME.conf (mode 0600) in a private directory; returns its path."""
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="wiretun-test-")
        text = wg_quick_config(
            self.keys.private, addresses=addresses, peers=peers, listen_port=listen_port,
            mtu=mtu, extra=extra,
        )  # fmt: skip
        path = os.path.join(self._dir.name, f"{self.name}.conf")
        write_secret(path, text)
        self.config_path = path
        return path

    def command(self, *args: str) -> list[str]:
        return wiretun_command(*args)

    def start(self, *args: str, timeout: float = 20.0, verbose: int = 1) -> WiretunPeer:
        """Run `wiretun -v up CONFIG ARGS` (`verbose` times -v: 2 logs at DEBUG) and return
        once it says it is up; procs.StartError (a RuntimeError, with the end of its log)
        if it does not come up, and then everything it made is removed."""
        if not self.config_path:
            raise RuntimeError("write_config() first")
        self._log = tempfile.NamedTemporaryFile(prefix=f"{self.name}-", suffix=".log")  # noqa: SIM115
        argv = self.command(*["-v"] * verbose, "up", self.config_path, *args)
        try:
            self.proc = launch_wiretun(
                self.ns, argv, self._log, timeout=timeout, what=f"wiretun {self.name}"
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stats(self) -> dict[str, Any]:
        """The live tunnel's counters (TunnelStats.to_json(), what `wiretun show --json`
        prints under "stats"), asked over its UAPI socket with the request `show` sends.
        Read them before `stop()`: the teardown log lines are for people."""
        from wiretun.tunnel import uapi_client  # noqa: PLC0415 (only tests that read stats)

        found = uapi_client.stats(self.name, SOCKET_DIR)
        if found is None:
            raise RuntimeError(f"{self.name} answered the stats request with no counters")
        return found

    def stop(self, sig: int = signal.SIGTERM, *, timeout: float = 15.0) -> int | None:
        """Signal wiretun and wait; returns its exit code (None if it was not running).
        Anything it failed to remove is removed here so a failing test leaves nothing."""
        code = None
        if self.proc is not None:
            code = stop_process(self.proc, timeout, sig)
            self.proc = None
        for path in (self.socket_path, self.pid_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.ns.run("ip", "link", "del", self.name, check=False)
        return code

    def close(self) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> WiretunPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
