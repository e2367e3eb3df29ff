"""The paths under test (bare veth, wireguard-go, kernel WireGuard, wiretun): set up over the
topology, torn down."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from wiretun.bench.ping import wait_reachable
from wiretun.bench.topology import BenchTopology
from wiretun.lab.netns import NetNS, unique_name
from wiretun.lab.procs import (
    SOCKET_DIR,
    KeyPair,
    PeerSpec,
    StartError,
    launch_wireguard_go,
    launch_wiretun,
    output_tail,
    stop_process,
    wireguard_go_command,
    write_secret,
)
from wiretun.lab.procs import wg_quick_config as _wg_quick_config
from wiretun.wireguard.device import DEFAULT_MTU

OVERLAY_MTU = DEFAULT_MTU  # WireGuard's, as wg-quick would leave it on a 1500-byte veth
BASE_LISTEN_PORT = 51820
UAPI_DIR = Path(SOCKET_DIR)
START_TIMEOUT = 15.0  # seconds for a tunnel process to say it is up
REACH_TIMEOUT = 10.0  # seconds for the first ping across a new tunnel (handshake included)
VERSION_TIMEOUT = 10.0  # seconds for `wireguard-go --version`
DEBIAN_WIREGUARD_GO = "wireguard-go"  # looked up on PATH unless --wireguard-go names another


class PathError(RuntimeError):
    """A path could not be set up; the message says why (with the process's stderr)."""


@dataclass
class PathHandle:
    """A path that is up: where clients in `a` aim, and the processes that carry it."""

    name: str
    target: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    links: list[tuple[NetNS, str]] = field(default_factory=list)  # in-kernel interfaces

    def exited(self) -> str | None:
        """Why the path broke, if one of its processes has exited, else None."""
        for proc, log in zip(self.processes, self.logs, strict=False):
            if proc.poll() is not None:
                return f"tunnel process exited with {proc.returncode}: {output_tail(log)}"
        return None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]


class PathKind(ABC):
    name: str
    needs_tun = False  # does it open /dev/net/tun (checked before the run starts)?

    def unavailable(self) -> str | None:
        """Why this path cannot run on this machine (it is then skipped), or None."""
        return None

    def version(self) -> str | None:
        return None

    def binary(self) -> str | None:
        """The executable that carries the path, where the user may choose it, or None."""
        return None

    @abstractmethod
    def setup(self, topo: BenchTopology, slot: int, workdir: Path) -> PathHandle:
        """Bring the path up. `slot` is unique per path and picks its subnet and port."""

    def teardown(self, handle: PathHandle) -> None:
        for proc in handle.processes:
            stop_process(proc)


class VethPath(PathKind):
    """The underlay itself: the ceiling every tunnel is compared with."""

    name = "veth"

    def setup(self, topo: BenchTopology, slot: int, workdir: Path) -> PathHandle:
        del slot, workdir
        return PathHandle(self.name, topo.underlay_b)


@dataclass(frozen=True, slots=True)
class TunnelEnd:
    ns: NetNS
    ifname: str
    private_key: str = field(repr=False)
    public_key: str
    overlay: str  # address without prefix
    underlay: str
    port: int


def tunnel_ends(topo: BenchTopology, slot: int, prefix: str) -> tuple[TunnelEnd, TunnelEnd]:
    ends = []
    port = BASE_LISTEN_PORT + slot
    for host, ns, underlay in ((1, topo.a, topo.underlay_a), (2, topo.b, topo.underlay_b)):
        keys = KeyPair.generate()
        # UAPI sockets share /var/run/wireguard across namespaces: names must be unique.
        ifname = unique_name(prefix)
        ends.append(
            TunnelEnd(ns, ifname, keys.private, keys.public, f"10.78.{slot}.{host}", underlay, port)
        )
    return ends[0], ends[1]


def wg_quick_config(local: TunnelEnd, peer: TunnelEnd, mtu: int = OVERLAY_MTU) -> str:
    """`local`'s wg-quick file with `peer` as its one peer."""
    return _wg_quick_config(
        local.private_key,
        addresses=[f"{local.overlay}/24"],
        listen_port=local.port,
        mtu=mtu,
        peers=[PeerSpec(peer.public_key, [f"{peer.overlay}/32"], f"{peer.underlay}:{peer.port}")],
    )


def _check_reachable(topo: BenchTopology, target: str, name: str) -> None:
    if not wait_reachable(topo.a, target, REACH_TIMEOUT):
        raise PathError(f"no ping reply from {target} across {name} within {REACH_TIMEOUT:g} s")


def configure_wg(local: TunnelEnd, peer: TunnelEnd, workdir: Path) -> None:
    """Give `local.ifname` (a wireguard-go or kernel interface) its key, peer, address, MTU."""
    keyfile = workdir / f"{local.ifname}.key"
    write_secret(keyfile, local.private_key + "\n")
    local.ns.run(
        "wg", "set", local.ifname, "private-key", str(keyfile),
        "listen-port", str(local.port), "peer", peer.public_key,
        "endpoint", f"{peer.underlay}:{peer.port}", "allowed-ips", f"{peer.overlay}/32",
    )  # fmt: skip
    local.ns.run("ip", "addr", "add", f"{local.overlay}/24", "dev", local.ifname)
    local.ns.run("ip", "link", "set", local.ifname, "mtu", str(OVERLAY_MTU), "up")


class _TunnelPath(PathKind):
    """Shared lifecycle: start both ends, stop them all if anything fails, check reachability."""

    ifprefix = "wt"
    needs_tun = True

    @abstractmethod
    def start_end(
        self, local: TunnelEnd, peer: TunnelEnd, workdir: Path
    ) -> subprocess.Popen[bytes]:
        """Start one end and return once its interface is configured and up."""

    def setup(self, topo: BenchTopology, slot: int, workdir: Path) -> PathHandle:
        end_a, end_b = tunnel_ends(topo, slot, self.ifprefix)
        handle = PathHandle(self.name, end_b.overlay)
        try:
            for local, peer in ((end_a, end_b), (end_b, end_a)):
                handle.logs.append(workdir / f"{local.ifname}.log")
                handle.processes.append(self.start_end(local, peer, workdir))
            _check_reachable(topo, end_b.overlay, self.name)
        except BaseException:
            self.teardown(handle)
            raise
        return handle


def first_line(text: str) -> str | None:
    """The first non-blank line of a `--version` output, stripped, or None."""
    return next((line.strip() for line in text.splitlines() if line.strip()), None)


def program_version(binary: str, timeout: float = VERSION_TIMEOUT) -> str | None:
    """`binary --version`'s first line (e.g. "wireguard-go v0.0.20250522"), or None."""
    try:
        proc = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return first_line(proc.stdout) if proc.returncode == 0 else None


def resolve_program(program: str) -> str | None:
    """`program` as an absolute path: a path to an executable file, or a name on PATH."""
    found = shutil.which(program)
    return os.path.abspath(found) if found is not None else None


class WireguardGoPath(_TunnelPath):
    """wireguard-go at both ends (Debian's on PATH, or `program`), set up with `wg` and `ip`."""

    name = "wireguard-go"
    ifprefix = "wtg"

    def __init__(self, program: str | None = None) -> None:
        self.program = program  # None: Debian's `wireguard-go` from PATH

    def binary(self) -> str | None:
        return resolve_program(self.program or DEBIAN_WIREGUARD_GO)

    def unavailable(self) -> str | None:
        if self.binary() is None:
            if self.program is not None:
                return f"--wireguard-go {self.program}: not an executable file"
            return "wireguard-go not installed (apt-get install wireguard-go)"
        if shutil.which("wg") is None:
            return "wg not installed (apt-get install wireguard-tools)"
        return None

    def version(self) -> str | None:
        binary = self.binary()
        return program_version(binary) if binary is not None else None

    def command(self, ifname: str) -> list[str]:
        return wireguard_go_command(ifname, binary=self.binary() or DEBIAN_WIREGUARD_GO)

    def start_end(
        self, local: TunnelEnd, peer: TunnelEnd, workdir: Path
    ) -> subprocess.Popen[bytes]:
        binary = self.binary() or DEBIAN_WIREGUARD_GO
        with open(workdir / f"{local.ifname}.log", "wb") as log:
            try:
                proc = launch_wireguard_go(
                    local.ns, local.ifname, log, binary=binary, timeout=START_TIMEOUT
                )
            except StartError as e:
                raise PathError(str(e)) from e
        try:
            configure_wg(local, peer, workdir)
        except BaseException:
            stop_process(proc)
            raise
        return proc


def kernel_wireguard_problem() -> str | None:
    """Why `ip link add type wireguard` fails here (tried in a throwaway namespace), or None."""
    try:
        ns = NetNS.create("wtk")
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        return f"cannot create a namespace to try kernel WireGuard: {e}"
    try:
        out = subprocess.run(
            ["ip", "netns", "exec", ns.name, "ip", "link", "add", "wtkprobe", "type", "wireguard"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as e:
        return f"ip link add type wireguard: {e}"
    finally:
        ns.delete()
    if out.returncode != 0:
        why = (first_line(out.stderr) or f"exit status {out.returncode}").removeprefix("Error: ")
        return f"no kernel WireGuard: ip link add type wireguard: {why} (modprobe wireguard)"
    return None


class KernelWgPath(PathKind):
    """The kernel's WireGuard at both ends (`ip link add type wireguard`), set up with `wg`.

    No process carries it, so it has no CPU s/GB or RSS: the work happens in softirq context."""

    name = "kernel-wg"
    ifprefix = "wtk"
    MODULE_VERSION = Path("/sys/module/wireguard/version")

    def unavailable(self) -> str | None:
        if shutil.which("wg") is None:
            return "wg not installed (apt-get install wireguard-tools)"
        return kernel_wireguard_problem()

    def version(self) -> str | None:
        try:
            return f"wireguard module {self.MODULE_VERSION.read_text().strip()}"
        except OSError:
            return None

    def setup(self, topo: BenchTopology, slot: int, workdir: Path) -> PathHandle:
        end_a, end_b = tunnel_ends(topo, slot, self.ifprefix)
        handle = PathHandle(self.name, end_b.overlay)
        try:
            for local, peer in ((end_a, end_b), (end_b, end_a)):
                local.ns.run("ip", "link", "add", local.ifname, "type", "wireguard")
                handle.links.append((local.ns, local.ifname))
                configure_wg(local, peer, workdir)
            _check_reachable(topo, end_b.overlay, self.name)
        except BaseException:
            self.teardown(handle)
            raise
        return handle

    def teardown(self, handle: PathHandle) -> None:
        for ns, ifname in handle.links:
            ns.run("ip", "link", "del", ifname, check=False)


class WiretunPath(_TunnelPath):
    """`python -m wiretun up` at both ends, from a wg-quick file."""

    ifprefix = "wtt"

    def __init__(
        self,
        queues: int,
        offload: bool,
        name: str | None = None,
        *,
        pure: bool = False,
        threads: bool = False,
    ) -> None:
        self.queues = queues
        self.offload = offload
        self.pure = pure  # WIRETUN_PURE=1: the per-packet Python data path
        self.threads = threads  # --tun-threads: the threaded Tun
        flags = ("" if offload else "-nooffload") + ("-pure" if pure else "")
        self.name = name or f"wiretun-q{queues}" + flags + ("-threads" if threads else "")

    def unavailable(self) -> str | None:
        if not os.path.exists("/dev/net/tun"):
            return "TUN unavailable: /dev/net/tun is missing (modprobe tun)"
        return None

    def version(self) -> str | None:
        try:
            return importlib.metadata.version("wiretun")
        except importlib.metadata.PackageNotFoundError:
            return None

    def command(self, config: Path, ifname: str) -> list[str]:
        return [
            "env", f"WIRETUN_PURE={int(self.pure)}",
            sys.executable, "-m", "wiretun", "up", str(config), "--interface", ifname,
            "--queues", str(self.queues), "--offload" if self.offload else "--no-offload",
            "--tun-threads" if self.threads else "--no-tun-threads",
        ]  # fmt: skip

    def start_end(
        self, local: TunnelEnd, peer: TunnelEnd, workdir: Path
    ) -> subprocess.Popen[bytes]:
        config = workdir / f"{local.ifname}.conf"
        write_secret(config, wg_quick_config(local, peer))
        with open(workdir / f"{local.ifname}.log", "wb") as log:
            try:
                return launch_wiretun(
                    local.ns, self.command(config, local.ifname), log, timeout=START_TIMEOUT
                )
            except StartError as e:
                raise PathError(str(e)) from e


def path_kind(name: str, offload: bool = True, wireguard_go: str | None = None) -> PathKind:
    """The path kind called `name` (see plan.DEFAULT_PATHS); `offload` applies to wiretun-qN,
    `wireguard_go` (a binary's path, None for Debian's) to wireguard-go."""
    if name == "veth":
        return VethPath()
    if name == "wireguard-go":
        return WireguardGoPath(wireguard_go)
    if name == "kernel-wg":
        return KernelWgPath()
    if name.startswith("wiretun-q"):
        # wiretun-q<N>[-nooffload][-pure][-threads]
        queues, *flags = name.removeprefix("wiretun-q").split("-")
        known = {"nooffload", "pure", "threads"}
        valid = set(flags) <= known and len(set(flags)) == len(flags)
        if queues.isdigit() and int(queues) > 0 and valid:
            return WiretunPath(
                int(queues),
                offload and "nooffload" not in flags,
                name,
                pure="pure" in flags,
                threads="threads" in flags,
            )
    raise ValueError(f"unknown path {name!r}")
