"""Network namespaces and veth pairs that are always removed, plus entering one in-thread."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def unique_name(prefix: str, length: int = 15) -> str:
    """`prefix` plus a random hex suffix, cut to `length` (IFNAMSIZ - 1 for interfaces)."""
    suffix = secrets.token_hex(4)
    return (prefix + suffix)[:length]


def is_root() -> bool:
    return os.geteuid() == 0


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def run(cmd: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    """Run a command, return stdout; on failure raise with stderr in the message."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class NetNS:
    """One named network namespace (`ip netns`), removed by `delete()`."""

    name: str
    _deleted: bool = field(default=False, repr=False)

    @classmethod
    def create(cls, prefix: str = "wt") -> NetNS:
        ns = cls(unique_name(prefix + "-", 30))
        run(["ip", "netns", "add", ns.name])
        ns.run("ip", "link", "set", "lo", "up")
        return ns

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> str:
        return run(["ip", "netns", "exec", self.name, *cmd], check=check, timeout=timeout)

    def popen(self, *cmd: str, **kwargs: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kwargs)  # type: ignore[call-overload, no-any-return]

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        """Move the calling thread into this namespace for the block (threads it starts and
        sockets/devices it opens stay in the namespace)."""
        with (
            open("/proc/thread-self/ns/net", "rb") as home,
            open(f"/run/netns/{self.name}", "rb") as target,
        ):
            _setns(target.fileno())
            try:
                yield
            finally:
                _setns(home.fileno())

    def delete(self) -> None:
        if not self._deleted:
            # Kill anything still running inside, or the namespace outlives `ip netns del`.
            pids = run(["ip", "netns", "pids", self.name], check=False).split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            run(["ip", "netns", "del", self.name], check=False)
            self._deleted = True


class Topology:
    """A set of namespaces and links registered for removal, usable as a context manager."""

    def __init__(self, prefix: str = "wt") -> None:
        self.prefix = prefix
        self.namespaces: list[NetNS] = []

    def netns(self) -> NetNS:
        ns = NetNS.create(self.prefix)
        self.namespaces.append(ns)
        return ns

    def veth(
        self, a: NetNS, b: NetNS, addr_a: str, addr_b: str, *, mtu: int | None = None
    ) -> tuple[str, str]:
        """Join `a` and `b` with a veth pair; addresses in CIDR form (v4 or v6)."""
        name_a, name_b = unique_name("va"), unique_name("vb")
        run(["ip", "link", "add", name_a, "type", "veth", "peer", "name", name_b])
        run(["ip", "link", "set", name_a, "netns", a.name])
        run(["ip", "link", "set", name_b, "netns", b.name])
        for ns, name, addr in ((a, name_a, addr_a), (b, name_b, addr_b)):
            if mtu is not None:
                ns.run("ip", "link", "set", name, "mtu", str(mtu))
            ns.run("ip", "addr", "add", addr, "dev", name, "nodad")
            ns.run("ip", "link", "set", name, "up")
        return name_a, name_b

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            ns.delete()
        self.namespaces.clear()

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
