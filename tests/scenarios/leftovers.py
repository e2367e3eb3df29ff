"""What a stopped `wiretun up` left behind in its namespace: the teardown tests' check."""

from __future__ import annotations

import os
import shutil

from wiretun.lab.netns import NetNS
from wiretun.lab.procs import SOCKET_DIR
from wiretun.netdev.spec import AUTO_TABLE_START


def wiretun_leftovers(
    ns: NetNS,
    name: str,
    *,
    listen_port: int | None = None,
    fwmark: str | None = None,
    table: str = str(AUTO_TABLE_START),
) -> list[str]:
    """What a stopped `wiretun up` for `name` in `ns` left behind (empty if nothing): its
    device, policy rules, routes in its fwmark table, nftables tables, UDP socket, UAPI
    socket, pid file and leftovers record. Rules: any besides the kernel's three (a test's
    namespace has no others), or with `fwmark` (e.g. "0x1234") when given. The default table
    is the one the first full-tunnel instance in a namespace gets."""
    left: list[str] = []
    if ns.run("ip", "link", "show", "dev", name, check=False).strip():
        left.append(f"device {name}")
    kernel = {"0", "32766", "32767"}
    for family in ("-4", "-6"):
        rules = [
            ln
            for ln in ns.run("ip", family, "rule").splitlines()
            if ln.split(":")[0] not in kernel or (fwmark is not None and fwmark in ln)
        ]
        left += [f"rule {ln.strip()}" for ln in rules]
        # A table without routes may not exist at all (an error for `ip -6`): empty either way.
        routes = ns.run("ip", family, "route", "show", "table", table, check=False).strip()
        left += [f"route {ln.strip()} (table {table})" for ln in routes.splitlines()]
    if shutil.which("nft"):
        tables = ns.run("nft", "list", "tables", check=False).splitlines()
        left += [f"nft {t.strip()}" for t in tables if f"wiretun-{name}" in t]
    if listen_port is not None:
        udp = ns.run("ss", "-uanH", f"sport = :{listen_port}").strip()
        left += [f"udp socket {ln.split()[3]}" for ln in udp.splitlines() if ln.strip()]
    for path in (f"{SOCKET_DIR}/{name}.{s}" for s in ("sock", "pid", "installed")):
        if os.path.exists(path):
            left.append(path)
    return left
