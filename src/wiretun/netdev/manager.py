"""TunDeviceManager: addresses, MTU, routes and the fwmark policy rule of one tunnel device."""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import TracebackType

from pyroute2 import AsyncIPRoute

from wiretun.ifname import check_ifname
from wiretun.netdev.errors import NetdevError
from wiretun.netdev.mark import mark_socket
from wiretun.netdev.ops import FAMILIES, LinkOps, collect, family_of, lookup_link, used_tables
from wiretun.netdev.spec import (
    AUTO_TABLE_START,
    DEFAULT_FWMARK,
    DEFAULT_MTU,
    DEFAULT_RULE_PRIORITY,
    DEFAULT_TABLE,
    IPV6_MIN_MTU,
    RESERVED_TABLES,
    U32_MAX,
    Interface,
    Network,
    TableSpec,
    check_mtu,
    check_rule_priority,
    check_table,
    check_u32,
    parse_host,
    parse_interfaces,
    parse_networks,
)

log = logging.getLogger(__name__)


class IpStack(enum.Flag):
    """Which address families `set_ips` / `set_addresses` configured completely."""

    NONE = 0
    V4 = enum.auto()
    V6 = enum.auto()
    DUAL = V4 | V6


_STACK_OF = {socket.AF_INET: IpStack.V4, socket.AF_INET6: IpStack.V6}


@dataclass(frozen=True, slots=True)
class AddressResult:
    """The families that got their addresses and rule, and the errors of those that did not."""

    stack: IpStack
    errors: tuple[NetdevError, ...]


class TunDeviceManager:
    """Configures one existing device (usually a TUN) through rtnetlink.

    Traffic without our `fwmark` looks up our routing `table` (policy rule
    `not fwmark M lookup T`, one per configured family); `set_routes` fills that table.
    The tunnel's own UDP sockets carry the mark (`mark_socket`) so they keep using the main
    table. All netlink traffic goes through one socket under one lock: the kernel answers a
    second dump on a socket that is still dumping with EBUSY.

    Namespaces: the netlink socket is opened by `start()` in the network namespace of the
    calling thread (e.g. inside `NetNS.enter()`), and stays bound to it; or pass `netns=` (a
    name under /run/netns) and pyroute2 opens it there from a helper process. Use the manager
    from one thread (pyroute2 keeps its socket per thread).

    Several devices on one host: give each its own table, or `table="auto"`, which makes
    `start()` take the first table from `AUTO_TABLE_START` up that has no route and that no
    rule uses (as table or mark), as wg-quick does. `fwmark=None` means "the table's number".
    `table="off"` manages addresses and the link only: no rule, no routes, no flush.
    `start()` flushes a table given by number (a crashed run's leftovers), never an "auto" one.
    """

    def __init__(
        self,
        name: str,
        *,
        mtu: int = DEFAULT_MTU,
        fwmark: int | None = DEFAULT_FWMARK,
        table: TableSpec = DEFAULT_TABLE,
        rule_priority: int = DEFAULT_RULE_PRIORITY,
        netns: str | None = None,
    ) -> None:
        self.name = check_ifname(name)
        self.mtu = check_mtu(mtu)
        if fwmark is not None:
            check_u32("fwmark", fwmark, low=1)
        self._table_spec: TableSpec = table
        # The table in use: None for "off", and for "auto" until start() has picked one.
        self.table: int | None = None
        if not isinstance(table, str) or table not in ("auto", "off"):
            self.table = check_table(table)  # type: ignore[arg-type]  # a bad str fails here
        # 0: no mark (Table=off without one, or "auto" before start()).
        self.fwmark: int = fwmark if fwmark is not None else (self.table or 0)
        self.rule_priority = check_rule_priority(rule_priority)
        self.netns = netns
        self._ops: LinkOps | None = None
        self._closed = False
        self._lock = asyncio.Lock()
        self._routes: frozenset[Network] = frozenset()
        self._rule_families: set[int] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the netlink socket, find the device, flush leftovers of a crashed run."""
        if self._closed:
            raise RuntimeError(f"TunDeviceManager for {self.name} is closed")
        if self._ops is not None:
            raise RuntimeError(f"TunDeviceManager for {self.name} already started")
        if self.netns is None:
            ipr = AsyncIPRoute(groups=0)
        else:
            # flags=0: fail instead of creating the namespace when it does not exist.
            ipr = AsyncIPRoute(groups=0, netns=self.netns, flags=0)
        try:
            async with self._lock:
                ifindex = await lookup_link(ipr, self.name)
                errors: list[NetdevError] = []
                if self._table_spec == "auto":
                    self.table = _free_table(await used_tables(ipr))
                    self.fwmark = self.fwmark or self.table
                ops = LinkOps(
                    ipr, self.name, ifindex,
                    table=self.table or 0, fwmark=self.fwmark, rule_priority=self.rule_priority,
                )  # fmt: skip
                if self._table_spec not in ("auto", "off"):
                    errors = await ops.flush_table()
        except BaseException:
            ipr.close()
            raise
        if errors:
            ipr.close()
            raise errors[0]
        self._ops = ops

    async def close(self) -> None:
        """Remove our rules and routes and flush our table; raises the first failure after
        trying everything. Idempotent."""
        if self._closed:
            return
        self._closed = True
        ops, self._ops = self._ops, None
        if ops is None:
            return
        errors: list[NetdevError] = []
        try:
            async with self._lock:
                if self.table is None:
                    return  # Table=off: nothing of ours in the routing tables
                # Both families, not just the ones we installed: a crashed run's rule goes too.
                for family in FAMILIES:
                    await collect(errors, ops.del_rule(family))
                for net in sorted(self._routes, key=str):
                    await collect(errors, ops.del_route(net))
                errors.extend(await ops.flush_table())
                self._routes = frozenset()
                self._rule_families.clear()
        finally:
            ops.ipr.close()
        for err in errors[1:]:
            log.warning("close %s: %s", self.name, err)
        if errors:
            raise errors[0]

    async def __aenter__(self) -> TunDeviceManager:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def ifindex(self) -> int:
        """The device's index (0 before `start()`)."""
        return self._ops.ifindex if self._ops is not None else 0

    @property
    def routes(self) -> frozenset[Network]:
        """The routes the last `set_routes` asked for (plus any whose removal failed)."""
        return self._routes

    async def set_fwmark(self, fwmark: int) -> None:
        """Change our mark (e.g. `wg set NAME fwmark X`): each installed rule is replaced by
        one that excludes the new mark. The tunnel's sockets are the caller's to re-mark."""
        check_u32("fwmark", fwmark, low=1)
        async with self._lock:
            ops = self._started()
            if fwmark == self.fwmark:
                return
            families = sorted(self._rule_families)
            old_mark = ops.fwmark
            # Add the new rule before deleting the old: no moment without one.
            ops.fwmark = fwmark
            added: list[int] = []
            errors: list[NetdevError] = []
            for family in families:
                if await collect(errors, ops.add_rule(family)):
                    break
                added.append(family)
            if errors:
                for family in added:  # undo: keep the old mark and its rules
                    await collect(errors, ops.del_rule(family))
                ops.fwmark = old_mark
                raise errors[0]
            ops.fwmark = old_mark
            for family in families:
                await collect(errors, ops.del_rule(family))
            ops.fwmark = self.fwmark = fwmark
        for err in errors:
            log.warning("set fwmark on %s: %s", self.name, err)

    def mark_socket(self, sock: socket.socket) -> None:
        """Give `sock` our fwmark so its packets bypass the tunnel's table."""
        mark_socket(sock, self.fwmark)

    def _started(self) -> LinkOps:
        if self._ops is None:
            state = "closed" if self._closed else "not started (call start())"
            raise RuntimeError(f"TunDeviceManager for {self.name} is {state}")
        return self._ops

    # -- addresses -------------------------------------------------------------------------

    async def set_ips(
        self,
        ipv4: IPv4Address | str | None,
        ipv6: IPv6Address | str | None,
    ) -> AddressResult:
        """The seed's API: one v4 /32 and one v6 /128 (either may be None)."""
        hosts = [h for h in (parse_host(ipv4, 4), parse_host(ipv6, 6)) if h is not None]
        return await self.set_addresses(hosts)

    async def set_addresses(self, addresses: Iterable[Interface | str]) -> AddressResult:
        """Make the device's addresses exactly `addresses` (any prefix, several per family),
        set the MTU, turn off IPv6 link-local generation, bring the link up and install the
        policy rule for each family whose addresses are all in place.

        Addresses already present stay (no flap); others are removed. Raises ValueError on
        bad input (before touching the system), NetdevError when the link itself cannot be
        configured or no family could be; partial failures are in the result.
        """
        wanted = parse_interfaces(addresses)
        if not wanted:
            raise ValueError("set_addresses needs at least one address")
        if any(a.version == 6 for a in wanted) and self.mtu < IPV6_MIN_MTU:
            raise ValueError(f"MTU {self.mtu} is below IPv6's minimum of {IPV6_MIN_MTU}")
        families: set[int] = {family_of(a) for a in wanted}
        async with self._lock:
            ops = self._started()
            errors: list[NetdevError] = []
            failed: set[int] = set()
            # Before the link goes up, or the kernel adds an fe80:: address we would not route.
            err = await collect(errors, ops.disable_link_local())
            if err is not None and socket.AF_INET6 in families:
                failed.add(socket.AF_INET6)
            present = await ops.addresses()
            for addr in present:
                if addr not in wanted:
                    await collect(errors, ops.del_addr(addr))
            await ops.set_mtu(self.mtu)
            for addr in wanted:
                if addr not in present and await collect(errors, ops.add_addr(addr)):
                    failed.add(family_of(addr))
            await ops.set_up()
            stack = await self._sync_rules(ops, families - failed, errors)
        for err in errors:
            log.warning("%s", err)
        if stack is IpStack.NONE:
            first = errors[0] if errors else NetdevError("configure", self.name, errno.EIO)
            first.add_note(f"no address family could be configured on {self.name}")
            raise first
        return AddressResult(stack, tuple(errors))

    async def _sync_rules(
        self, ops: LinkOps, families: set[int], errors: list[NetdevError]
    ) -> IpStack:
        """Our rule for each family in `families`, none for the others."""
        stack = IpStack.NONE
        if self.table is None:  # Table=off: no rules to install
            for family in families:
                stack |= _STACK_OF[socket.AddressFamily(family)]
            return stack
        for family in FAMILIES:
            if family in families and not await collect(errors, ops.add_rule(family)):
                self._rule_families.add(family)
                stack |= _STACK_OF[family]
            # A family without its addresses must not pull traffic into our table.
            elif family in self._rule_families and not await collect(errors, ops.del_rule(family)):
                self._rule_families.discard(family)
        return stack

    # -- routes ----------------------------------------------------------------------------

    async def set_routes(
        self,
        v4_networks: Iterable[IPv4Network | str],
        v6_networks: Iterable[IPv6Network | str],
    ) -> tuple[NetdevError, ...]:
        """Make our table hold exactly these routes via the device.

        Stale routes are removed, then every current one is (re)added: the kernel drops
        routes when the link goes down, and re-adding makes the call idempotent. Returns the
        per-route failures (each also logged); none of them stops the others.
        """
        v4 = parse_networks(v4_networks, IPv4Network)
        new: frozenset[Network] = v4 | parse_networks(v6_networks, IPv6Network)
        async with self._lock:
            ops = self._started()
            if self.table is None:
                raise RuntimeError(f"{self.name} has no routing table (table='off')")
            errors: list[NetdevError] = []
            kept_stale: set[Network] = set()
            for net in sorted(self._routes - new, key=str):
                if await collect(errors, ops.del_route(net)):
                    kept_stale.add(net)  # retried by the next call and by close()
            for net in sorted(new, key=str):
                await collect(errors, ops.add_route(net))
            self._routes = new | kept_stale
        for err in errors:
            log.warning("%s", err)
        return tuple(errors)

    # -- link ------------------------------------------------------------------------------

    async def set_mtu(self, mtu: int) -> None:
        check_mtu(mtu)
        async with self._lock:
            await self._started().set_mtu(mtu)
            self.mtu = mtu

    async def set_up(self) -> None:
        async with self._lock:
            await self._started().set_up()

    async def set_txqueuelen(self, n: int) -> None:
        """The device's transmit queue length (Firezone found 10000 better than 500)."""
        check_u32("txqueuelen", n)
        async with self._lock:
            await self._started().set_txqueuelen(n)


def _free_table(used: set[int]) -> int:
    """The first table from AUTO_TABLE_START up that nothing uses."""
    table = AUTO_TABLE_START
    while table in used or table in RESERVED_TABLES:
        table += 1
        if table > U32_MAX:
            raise NetdevError("find a free routing table", "from 51820", errno.ENOSPC)
    return table
