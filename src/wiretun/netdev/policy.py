"""wg-quick's routes and policy rules for one device: AllowedIPs routes, and for default routes
the fwmark table with its `not fwmark M lookup T` and `lookup main suppress_prefixlength 0`."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pyroute2 import AsyncIPRoute

from wiretun.netdev.bulk import RouteSocket
from wiretun.netdev.errors import NetdevError, errno_of
from wiretun.netdev.ops import (
    EXISTS,
    FIB_RULE_INVERT,
    GONE,
    collect,
    family_name,
    family_of,
    lookup_link,
    nl_call,
)
from wiretun.netdev.spec import AUTO_TABLE_START, U32_MAX, Network, check_u32

log = logging.getLogger(__name__)

MAIN_TABLE = 254
# Deleting a route of a device already gone: the kernel removed it with the device.
_ROUTE_GONE = GONE | {errno.ENODEV}
SRC_VALID_MARK = "/proc/sys/net/ipv4/conf/all/src_valid_mark"


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One policy rule as installed (priority included, so deleting it hits exactly it).

    `fwmark` 0: no mark match. `suppress_prefixlength` None: no suppressor."""

    family: int
    priority: int
    table: int
    fwmark: int = 0
    invert: bool = False
    suppress_prefixlength: int | None = None

    def describe(self) -> str:
        what = f"{self.priority}: "
        if self.fwmark:
            what += f"{'not ' if self.invert else ''}fwmark 0x{self.fwmark:x} "
        what += f"lookup {self.table}"
        if self.suppress_prefixlength is not None:
            what += f" suppress_prefixlength {self.suppress_prefixlength}"
        return f"{family_name(self.family)} rule '{what}'"

    def netlink_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "family": self.family,
            "priority": self.priority,
            "table": self.table,
        }
        if self.fwmark:
            args["fwmark"] = self.fwmark
        if self.invert:
            args["flags"] = FIB_RULE_INVERT
        if self.suppress_prefixlength is not None:
            args["suppress_prefixlen"] = self.suppress_prefixlength
        return args

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RuleSpec:
        spl = data.get("suppress_prefixlength")
        return cls(
            family=int(data["family"]),
            priority=int(data["priority"]),
            table=int(data["table"]),
            fwmark=int(data.get("fwmark", 0)),
            invert=bool(data.get("invert", False)),
            suppress_prefixlength=None if spl is None else int(spl),
        )


def default_rule_priority(priorities: Iterable[int]) -> int:
    """The priority the kernel gives a rule added without one (what `ip rule add` and thus
    wg-quick get): one below the second rule in order, e.g. 32765 below `main`'s 32766."""
    ordered = sorted(priorities)
    if len(ordered) >= 2 and ordered[1] > 0:
        return ordered[1] - 1
    return 0


async def delete_rules(ipr: Any, rules: Iterable[RuleSpec]) -> list[NetdevError]:
    """Delete each rule (already gone counts as done); returns the failures."""
    errors: list[NetdevError] = []
    for rule in rules:
        await collect(
            errors,
            nl_call("delete", rule.describe(), ipr.rule("del", **rule.netlink_args()), GONE),
        )
    return errors


class PolicyRouting:
    """The routes and rules wg-quick would add for one device, and their removal.

    `on_rules` is called with every rule about to be added (before it is) and after each
    removal, so a crash in between leaves a record that names all of them (see
    wiretun.tunnel.leftovers). Routes need no record: they are the device's and go with it.
    Open in the namespace of the calling thread; use from one thread.
    """

    def __init__(self, name: str, *, on_rules: Callable[[list[RuleSpec]], None]) -> None:
        self.name = name
        self._on_rules = on_rules
        self._ipr: Any = None
        self._bulk: RouteSocket | None = None
        self._ifindex = 0
        self._lock = asyncio.Lock()
        self._routes: list[tuple[Network, int]] = []
        # Our device's main-table prefixes, {(version, length): network ints}: read once,
        # then kept up to date with the routes we add (see covered_in_main).
        self._main: dict[tuple[int, int], set[int]] | None = None
        self.rules: list[RuleSpec] = []
        self.fwmark = 0  # the mark the `not fwmark` rules exclude (0 = none installed)
        self.fwmark_table: int | None = None

    async def start(self) -> None:
        ipr = AsyncIPRoute(groups=0)
        try:
            self._ifindex = await lookup_link(ipr, self.name)
            self._bulk = RouteSocket()  # routes go in bulk, the rest through pyroute2
        except BaseException:
            ipr.close()
            raise
        self._ipr = ipr

    def _started(self) -> Any:
        if self._ipr is None:
            raise RuntimeError(f"PolicyRouting for {self.name} is not started")
        return self._ipr

    @property
    def has_fwmark_rules(self) -> bool:
        return any(rule.fwmark for rule in self.rules)

    async def free_table(self) -> int:
        """wg-quick's pick for a default route without FwMark: the first table from 51820 up
        with no route in either family."""
        ipr = self._started()

        async def dump() -> set[int]:
            used: set[int] = set()
            for family in (socket.AF_INET, socket.AF_INET6):
                async for msg in await ipr.get_routes(family=family, table=0):
                    used.add(int(msg.get("table") or 0))
            return used

        async with self._lock:
            used = await nl_call("list", "routes", dump()) or set()
        table = AUTO_TABLE_START
        while table in used:
            table += 1
            if table > U32_MAX:
                raise NetdevError("find a free routing table", "from 51820", errno.ENOSPC)
        return table

    async def covered_in_main(self, net: Network) -> bool:
        """True if a main-table route of our device already covers `net` (the prefix route
        of an Address, say): wg-quick adds no route then (`ip route show dev D match N`).

        The device's main routes are dumped once (the first call) and then followed through
        our own add_route: one dump per AllowedIP made `up` of 10k peers quadratic (each
        dump lists every route added so far). Routes others add to our brand-new device
        between two calls are not seen; wg-quick's per-IP check would see them."""
        if self._main is None:
            self._main = await self._main_prefixes()
        bits, version, addr = net.max_prefixlen, net.version, int(net.network_address)
        # Only the prefix lengths main has (a few), not all 33 or 129.
        return any(
            addr >> (bits - n) << (bits - n) in nets
            for (v, n), nets in self._main.items()
            if v == version and n <= net.prefixlen
        )

    async def _main_prefixes(self) -> dict[tuple[int, int], set[int]]:
        ipr = self._started()

        async def dump(family: int) -> list[Any]:
            return [
                m
                async for m in await ipr.get_routes(
                    family=family, table=MAIN_TABLE, oif=self._ifindex
                )
            ]

        found: dict[tuple[int, int], set[int]] = {}
        for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
            async with self._lock:
                routes = await nl_call("list routes of", self.name, dump(family)) or []
            for msg in routes:
                if int(msg.get("table") or msg["table"]) != MAIN_TABLE:
                    continue
                if int(msg.get("oif") or 0) != self._ifindex:
                    continue
                dst = msg.get("dst") or ("0.0.0.0" if version == 4 else "::")
                net = ipaddress.ip_network(f"{dst}/{int(msg['dst_len'])}", strict=False)
                found.setdefault((version, net.prefixlen), set()).add(int(net.network_address))
        return found

    async def add_route(self, net: Network, table: int) -> None:
        """`ip route add NET dev D table T`. A route to NET already in T (another device's
        default route in main, say) is an error, as it is for wg-quick: ours would not win."""
        await self.add_routes([(net, table)])

    async def add_routes(self, routes: Sequence[tuple[Network, int]]) -> None:
        """add_route for each (network, table), sent in bulk. Raises a NetdevError for the
        first that failed; unlike wg-quick, which stops there, the others were tried too, and
        those that went in are ours (close() removes them)."""
        self._started()
        bulk = self._bulk
        assert bulk is not None  # set with _ipr
        async with self._lock:
            try:
                codes = await bulk.apply("add", routes, self._ifindex)
            except OSError as e:
                raise NetdevError("add routes", f"dev {self.name}", errno_of(e)) from e
        failed: NetdevError | None = None
        for (net, table), code in zip(routes, codes, strict=True):
            if code:
                failed = failed or NetdevError(
                    "add route", f"{net} dev {self.name} table {table}", code
                )
                continue
            self._routes.append((net, table))
            if table == MAIN_TABLE and self._main is not None:
                key = (net.version, net.prefixlen)
                self._main.setdefault(key, set()).add(int(net.network_address))
        if failed is not None:
            raise failed

    async def add_default(self, net: Network, table: int, fwmark: int) -> None:
        """A default route: into `table`, plus (once per family) `not fwmark M lookup T` and
        `lookup main suppress_prefixlength 0`, at the priorities the kernel would pick."""
        check_u32("fwmark", fwmark, low=1)
        await self.add_route(net, table)
        family = family_of(net)
        if any(rule.family == family for rule in self.rules):
            return
        self.fwmark, self.fwmark_table = fwmark, table
        await self._add_rule(family, lambda prio: RuleSpec(family, prio, table, fwmark, True))
        await self._add_rule(family, lambda prio: RuleSpec(family, prio, MAIN_TABLE, 0, False, 0))
        if family == socket.AF_INET:
            _set_src_valid_mark()

    async def _add_rule(self, family: int, make: Callable[[int], RuleSpec]) -> None:
        ipr = self._started()
        async with self._lock:

            async def priorities() -> list[int]:
                return [
                    int(m.get("priority") or 0) async for m in await ipr.get_rules(family=family)
                ]

            prios = await nl_call("list", f"{family_name(family)} rules", priorities()) or []
            rule = make(default_rule_priority(prios))
            self._on_rules([*self.rules, rule])
            await nl_call("add", rule.describe(), ipr.rule("add", **rule.netlink_args()), EXISTS)
            self.rules.append(rule)

    async def set_fwmark(self, fwmark: int) -> None:
        """Move the `not fwmark` rules to a new mark (`wg set D fwmark X` at runtime): the
        new rule goes in at the old one's priority before the old one is deleted."""
        check_u32("fwmark", fwmark, low=1)
        ipr = self._started()
        async with self._lock:
            old = [rule for rule in self.rules if rule.fwmark]
            if not old or fwmark == self.fwmark:
                return
            new = [
                RuleSpec(r.family, r.priority, r.table, fwmark, r.invert, r.suppress_prefixlength)
                for r in old
            ]
            self._on_rules([*self.rules, *new])
            for rule in new:
                await nl_call(
                    "add", rule.describe(), ipr.rule("add", **rule.netlink_args()), EXISTS
                )
            errors = await delete_rules(ipr, old)
            self.rules = [r for r in self.rules if r not in old] + new
            self.fwmark = fwmark
            self._on_rules(list(self.rules))
        for err in errors:
            log.warning("set fwmark on %s: %s", self.name, err)

    async def close(self) -> None:
        """Delete our rules and routes; failures are logged. Idempotent."""
        ipr, self._ipr = self._ipr, None
        bulk, self._bulk = self._bulk, None
        if ipr is None or bulk is None:
            return
        errors: list[NetdevError] = []
        try:
            async with self._lock:
                errors += await delete_rules(ipr, reversed(self.rules))
                self.rules = []
                self._on_rules([])
                routes = self._routes[::-1]
                # The device may be gone already, and its routes with it.
                try:
                    codes = await bulk.apply("del", routes, self._ifindex)
                except OSError as e:
                    errors.append(NetdevError("delete routes", f"dev {self.name}", errno_of(e)))
                    codes = [0] * len(routes)  # unknown: nothing more to say per route
                for (net, table), code in zip(routes, codes, strict=True):
                    if code and code not in _ROUTE_GONE:
                        errors.append(NetdevError("delete route", f"{net} table {table}", code))
                self._routes = []
        finally:
            ipr.close()
            bulk.close()
        for err in errors:
            log.warning("teardown of %s: %s", self.name, err)


def _set_src_valid_mark() -> None:
    """wg-quick's `sysctl net.ipv4.conf.all.src_valid_mark=1`: reverse-path checks of the
    encrypted replies then see the mark. Left set on exit, as wg-quick leaves it."""
    try:
        with open(SRC_VALID_MARK, "w") as f:
            f.write("1\n")
    except OSError as e:
        log.warning("cannot set %s: %s", SRC_VALID_MARK, e)
