"""wg-quick's routing semantics for `wiretun up`: which table Table= names, which AllowedIPs
go where (main table, a given table, or the fwmark table for default routes), and moving the
fwmark rules when `wg set NAME fwmark X` changes the mark at runtime."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from wiretun.netdev.errors import NetdevError
from wiretun.tunnel.config import ConfigError, IPNetwork, TunnelConfig

log = logging.getLogger(__name__)

RT_TABLES = "/etc/iproute2/rt_tables"
# iproute2's names that need no rt_tables entry.
_BUILTIN_TABLES = {"default": 253, "main": 254, "local": 255}

TableSetting = int | Literal["auto", "off"]


def _rt_tables_files(rt_tables: str) -> list[str]:
    return [rt_tables, *sorted(glob.glob(f"{rt_tables}.d/*.conf"))]


def _lookup_table_name(name: str, rt_tables: str) -> int | None:
    if name in _BUILTIN_TABLES:
        return _BUILTIN_TABLES[name]
    for path in _rt_tables_files(rt_tables):
        with contextlib.suppress(OSError), open(path) as f:
            for line in f:
                fields = line.split("#", 1)[0].split()
                if len(fields) >= 2 and fields[1] == name:
                    with contextlib.suppress(ValueError):
                        return int(fields[0], 0)
    return None


def routing_table(config: TunnelConfig, rt_tables: str = RT_TABLES) -> TableSetting:
    """Table= as wg-quick reads it: "auto" (unset), "off", or a table number; a name is
    looked up as `ip` does (main, local, default, then rt_tables and rt_tables.d/*.conf).
    Raises ConfigError for an unknown name or table 0."""
    table = config.interface.table
    if table in ("off", "auto"):
        return "auto" if table == "auto" else "off"
    number = table if isinstance(table, int) else _lookup_table_name(str(table), rt_tables)
    if number is None:
        raise ConfigError(
            config.interface.name, None, "[Interface] Table", f"unknown routing table {table!r}"
        )
    if not 1 <= number <= 0xFFFFFFFF:
        raise ConfigError(
            config.interface.name, None, "[Interface] Table", f"{table!r} is not a usable table"
        )
    return number


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """What wg-quick would install, in its order (longest prefixes first).

    `routes`: (network, table) pairs, table None meaning "main, unless a route of the
    device there already covers it"; `defaults`: default routes for the fwmark table."""

    routes: tuple[tuple[IPNetwork, int | None], ...]
    defaults: tuple[IPNetwork, ...]


def allowed_ips(config: TunnelConfig) -> list[IPNetwork]:
    """Every peer's AllowedIPs, once each, longest prefix first (wg-quick's `sort -nr`)."""
    nets = dict.fromkeys(net for peer in config.peers for net in peer.allowed_ips)
    return sorted(nets, key=lambda n: n.prefixlen, reverse=True)


def plan_routes(config: TunnelConfig, table: TableSetting) -> RoutePlan:
    if table == "off":
        return RoutePlan((), ())
    routes: list[tuple[IPNetwork, int | None]] = []
    defaults: list[IPNetwork] = []
    for net in allowed_ips(config):
        if table != "auto":
            routes.append((net, table))
        elif net.prefixlen == 0:
            defaults.append(net)
        else:
            routes.append((net, None))
    return RoutePlan(tuple(routes), tuple(defaults))


def is_default(net: IPNetwork) -> bool:
    return net in (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


def configured_fwmark(config: TunnelConfig) -> int | None:
    """FwMark= when set and not off."""
    return config.interface.fwmark or None


class FwmarkRules(Protocol):
    """The part of netdev.policy.PolicyRouting the follower needs."""

    name: str

    @property
    def has_fwmark_rules(self) -> bool: ...

    async def set_fwmark(self, fwmark: int) -> None: ...


class FwmarkFollower:
    """The UAPI backend's `set_fwmark`: re-marks the sockets now and moves the `not fwmark`
    rules to the new mark (asynchronously: netlink is async, UAPI `apply` is not).

    Mark 0 is refused while such rules exist: a rule cannot exclude unmarked packets, so
    the tunnel's own UDP would be routed into the tunnel.
    """

    def __init__(self, remark_sockets: Callable[[int], None]) -> None:
        self._remark = remark_sockets
        self.rules: FwmarkRules | None = None  # set once the routes are in place
        self._moves: set[asyncio.Task[None]] = set()

    def __call__(self, mark: int) -> None:
        rules = self.rules
        if rules is not None and rules.has_fwmark_rules:
            if mark == 0:
                raise OSError(errno.EINVAL, "fwmark 0 cannot exclude the tunnel's own packets")
            task = asyncio.get_running_loop().create_task(self._move(rules, mark))
            self._moves.add(task)
            task.add_done_callback(self._moves.discard)
        self._remark(mark)

    async def _move(self, rules: FwmarkRules, mark: int) -> None:
        try:
            await rules.set_fwmark(mark)
        except (NetdevError, RuntimeError) as e:  # RuntimeError: closed meanwhile
            log.warning("%s: cannot move the policy rules to fwmark 0x%x: %s", rules.name, mark, e)

    async def settle(self) -> None:
        """Wait for rule moves in flight (before the rules are removed)."""
        if self._moves:
            await asyncio.gather(*self._moves)
