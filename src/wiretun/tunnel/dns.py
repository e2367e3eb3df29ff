"""wg-quick's DNS=: the servers and search domains go to `resolvconf` (or, where there is
none, to `resolvectl`) while the interface is up."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence

INTERFACE_ORDER = "/etc/resolvconf/interface-order"
_PREFIX_RE = re.compile(r"([A-Za-z0-9-]+)\*")


class DnsError(Exception):
    """DNS could not be set (no tool for it, or the tool failed)."""


def resolvconf_iface_prefix(path: str = INTERFACE_ORDER) -> str:
    """Debian's resolvconf orders interfaces by name patterns: wg-quick files ours under the
    first `NAME*` pattern of interface-order ("tun." for `tun*`), if any."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    for line in lines:
        m = _PREFIX_RE.fullmatch(line.strip())
        if m:
            return f"{m.group(1)}."
    return ""


async def _run(argv: list[str], stdin: str | None = None) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, err = await proc.communicate(None if stdin is None else stdin.encode())
    if proc.returncode != 0:
        why = err.decode(errors="replace").strip() or f"exit status {proc.returncode}"
        raise DnsError(f"`{' '.join(argv)}` failed: {why}")


async def set_dns(name: str, servers: Sequence[str], search: Sequence[str]) -> str:
    """Install DNS for interface `name`; returns the handle `unset_dns` takes."""
    if shutil.which("resolvconf"):
        iface = resolvconf_iface_prefix() + name
        text = "".join(f"nameserver {s}\n" for s in servers)
        if search:
            text += f"search {' '.join(search)}\n"
        print(f"[#] resolvconf -a {iface} -m 0 -x", file=sys.stderr, flush=True)
        await _run(["resolvconf", "-a", iface, "-m", "0", "-x"], stdin=text)
        return f"resolvconf:{iface}"
    if shutil.which("resolvectl"):
        await _run(["resolvectl", "dns", name, *servers])
        if search:
            await _run(["resolvectl", "domain", name, *search])
        return f"resolvectl:{name}"
    raise DnsError("DNS is set, but neither resolvconf nor resolvectl is on PATH")


async def unset_dns(handle: str) -> None:
    """Remove what `set_dns` installed (a handle from a crashed run is fine too)."""
    tool, _, iface = handle.partition(":")
    if tool == "resolvconf" and shutil.which("resolvconf"):
        await _run(["resolvconf", "-d", iface, "-f"])
    elif tool == "resolvectl" and shutil.which("resolvectl"):
        await _run(["resolvectl", "revert", iface])
