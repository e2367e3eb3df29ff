"""wg-quick's nftables rules for a default route through the tunnel, per family, in a table of
their own (`ip wiretun-NAME`, `ip6 wiretun-NAME`):

- raw prerouting: a packet for one of the device's addresses that arrives on another device
  from a non-local source is dropped (nobody on the LAN can reach the tunnel address);
- mangle: the mark of the tunnel's own UDP is saved in conntrack on the way out and restored
  on the replies, so that with `src_valid_mark` the reverse-path check of the encrypted
  replies takes the mark's route (the underlay) instead of the tunnel (strict rp_filter).

wg-quick falls back to iptables-restore without `nft`; wiretun warns and goes on without
these rules instead. A `wg set NAME fwmark X` at runtime moves the policy rules but not
these (wg-quick does neither).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)


class FirewallError(Exception):
    """`nft` refused the rules."""


def table_name(name: str) -> str:
    return f"wiretun-{name}"


def ruleset(family: int, name: str, fwmark: int, addresses: Iterable[str]) -> str:
    """The `nft -f` script wg-quick's add_default writes for `family` (4 or 6)."""
    pf = "ip" if family == 4 else "ip6"
    table = f"{pf} {table_name(name)}"
    lines = [
        f"add table {table}",
        f"add chain {table} preraw {{ type filter hook prerouting priority -300; }}",
        f"add chain {table} premangle {{ type filter hook prerouting priority -150; }}",
        f"add chain {table} postmangle {{ type filter hook postrouting priority -150; }}",
    ]
    for addr in addresses:
        ip = ipaddress.ip_interface(addr).ip
        if ip.version == family:
            lines.append(
                f'add rule {table} preraw iifname != "{name}" {pf} daddr {ip} '
                "fib saddr type != local drop"
            )
    lines += [
        f"add rule {table} postmangle meta l4proto udp mark {fwmark} ct mark set mark",
        f"add rule {table} premangle meta l4proto udp meta mark set ct mark",
    ]
    return "\n".join(lines) + "\n"


async def _nft(script: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "nft", "-f", "-",
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate(script.encode())
    if proc.returncode != 0:
        why = err.decode(errors="replace").strip() or f"exit status {proc.returncode}"
        raise FirewallError(f"nft: {why}")


async def delete_tables(tables: Iterable[str]) -> None:
    """`nft delete table` each of `tables` ("ip wiretun-wg0"); one already gone is fine."""
    for table in tables:
        try:
            await _nft(f"add table {table}\ndelete table {table}\n")
        except (FirewallError, OSError) as e:
            log.warning("cannot delete nftables table %s: %s", table, e)


class Firewall:
    """The tables one `wiretun up` added; `on_tables` sees every change (before an add,
    after a delete), for the crash record."""

    def __init__(self, name: str, *, on_tables: Callable[[list[str]], None]) -> None:
        self.name = name
        self._on_tables = on_tables
        self.tables: list[str] = []

    async def add_default(self, family: int, fwmark: int, addresses: Iterable[str]) -> None:
        """Install the rules for `family` (4 or 6), once."""
        table = f"{'ip' if family == 4 else 'ip6'} {table_name(self.name)}"
        if table in self.tables:
            return
        if shutil.which("nft") is None:
            log.warning(
                "%s: no nft: the full tunnel runs without wg-quick's anti-spoofing and "
                "connmark rules",
                self.name,
            )
            return
        script = ruleset(family, self.name, fwmark, addresses)
        print(f"[#] nft -f (table {table})", file=sys.stderr, flush=True)
        self._on_tables([*self.tables, table])
        try:
            await _nft(script)
        except BaseException:
            await delete_tables([table])  # nft -f is atomic, but a table may be half there
            self._on_tables(list(self.tables))
            raise
        self.tables.append(table)

    async def close(self) -> None:
        tables, self.tables = self.tables, []
        await delete_tables(reversed(tables))
        if tables:
            self._on_tables([])
