"""TunDeviceManager: addresses, MTU, routes and the fwmark policy rule of one tunnel device."""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import socket
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_interface
from types import TracebackType
from typing import Any, TypeVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_DELROUTE

from wiretun.netdev.errors import OS_ERRORS, NetdevError, errno_of
from wiretun.netdev.mark import mark_socket
from wiretun.netdev.spec import (
    DEFAULT_FWMARK,
    DEFAULT_MTU,
    DEFAULT_RULE_PRIORITY,
    DEFAULT_TABLE,
    IPV6_MIN_MTU,
    Interface,
    Network,
    check_ifname,
    check_mtu,
    check_rule_priority,
    check_table,
    check_u32,
    parse_host,
    parse_interfaces,
    parse_networks,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")

FIB_RULE_INVERT = 0x2
IFA_F_NODAD = 0x2
IN6_ADDR_GEN_MODE_NONE = 1
_FAMILIES = (socket.AF_INET, socket.AF_INET6)
# Deleting something already gone is the outcome we wanted (ESRCH is IPv4's "no such route").
_GONE = frozenset({errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL})
_EXISTS = frozenset({errno.EEXIST})


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


def _family(obj: Interface | Network) -> socket.AddressFamily:
    return socket.AF_INET if obj.version == 4 else socket.AF_INET6


def _fam_name(family: int) -> str:
    return "IPv4" if family == socket.AF_INET else "IPv6"


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
    """

    def __init__(
        self,
        name: str,
        *,
        mtu: int = DEFAULT_MTU,
        fwmark: int = DEFAULT_FWMARK,
        table: int = DEFAULT_TABLE,
        rule_priority: int = DEFAULT_RULE_PRIORITY,
        netns: str | None = None,
    ) -> None:
        self.name = check_ifname(name)
        self.mtu = check_mtu(mtu)
        self.fwmark = check_u32("fwmark", fwmark, low=1)
        self.table = check_table(table)
        self.rule_priority = check_rule_priority(rule_priority)
        self.netns = netns
        self._ipr: Any = None
        self._ifindex = 0
        self._closed = False
        self._lock = asyncio.Lock()
        self._routes: frozenset[Network] = frozenset()
        self._rule_families: set[int] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the netlink socket, find the device, flush leftovers of a crashed run."""
        if self._closed:
            raise RuntimeError("TunDeviceManager is closed")
        if self._ipr is not None:
            raise RuntimeError("TunDeviceManager already started")
        if self.netns is None:
            ipr = AsyncIPRoute(groups=0)
        else:
            # flags=0: fail instead of creating the namespace when it does not exist.
            ipr = AsyncIPRoute(groups=0, netns=self.netns, flags=0)
        self._ipr = ipr
        try:
            async with self._lock:
                self._ifindex = await self._lookup(ipr)
                errors = await self._flush_table(ipr)
        except BaseException:
            self._ipr = None
            ipr.close()
            raise
        if errors:
            self._ipr = None
            ipr.close()
            raise errors[0]

    async def _lookup(self, ipr: Any) -> int:
        found = await self._nl("look up link", self.name, ipr.link_lookup(ifname=self.name))
        if not found:
            raise NetdevError("look up link", self.name, errno.ENODEV)
        return int(found[0])

    async def close(self) -> None:
        """Remove our rules and routes and flush our table; raises the first failure after
        trying everything. Idempotent."""
        if self._closed:
            return
        self._closed = True
        ipr, self._ipr = self._ipr, None
        if ipr is None:
            return
        errors: list[NetdevError] = []
        try:
            async with self._lock:
                # Both families, not just the ones we installed: a crashed run's rule goes too.
                for family in _FAMILIES:
                    await self._collect(errors, self._del_rule(ipr, family))
                for net in sorted(self._routes, key=str):
                    await self._collect(errors, self._del_route(ipr, net))
                errors.extend(await self._flush_table(ipr))
                self._routes = frozenset()
                self._rule_families.clear()
        finally:
            ipr.close()
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
        return self._ifindex

    @property
    def routes(self) -> frozenset[Network]:
        """The routes the last `set_routes` asked for (plus any whose removal failed)."""
        return self._routes

    def mark_socket(self, sock: socket.socket) -> None:
        """Give `sock` our fwmark so its packets bypass the tunnel's table."""
        mark_socket(sock, self.fwmark)

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

        Raises ValueError on bad input (before touching the system), NetdevError when the
        device itself cannot be configured or no family could be.
        """
        wanted = parse_interfaces(addresses)
        if not wanted:
            raise ValueError("set_addresses needs at least one address")
        if any(a.version == 6 for a in wanted) and self.mtu < IPV6_MIN_MTU:
            raise ValueError(f"MTU {self.mtu} is below IPv6's minimum of {IPV6_MIN_MTU}")
        families = {_family(a) for a in wanted}
        async with self._lock:
            ipr = self._started()
            idx = self._ifindex
            errors: list[NetdevError] = []
            failed: set[int] = set()

            # Before the link goes up, or the kernel adds an fe80:: address we would not route.
            gen_mode = {"attrs": [("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", 1)]})]}
            err = await self._collect(
                errors,
                self._nl(
                    "disable IPv6 link-local on",
                    self.name,
                    ipr.link("set", index=idx, IFLA_AF_SPEC=gen_mode),
                ),
            )
            if err is not None and socket.AF_INET6 in families:
                failed.add(socket.AF_INET6)

            present = await self._addresses(ipr)
            for addr in present:
                if addr not in wanted:
                    await self._collect(errors, self._del_addr(ipr, addr))
            await self._set_mtu(ipr, self.mtu)
            for addr in wanted:
                if addr in present:
                    continue
                if await self._collect(errors, self._add_addr(ipr, addr)) is not None:
                    failed.add(_family(addr))
            await self._set_up(ipr)

            stack = IpStack.NONE
            for family in _FAMILIES:
                wanted_ok = family in families and family not in failed
                if wanted_ok and await self._collect(errors, self._add_rule(ipr, family)) is None:
                    stack |= _STACK_OF[family]
                    continue
                # A family without its addresses must not pull traffic into our table.
                if family in self._rule_families:
                    await self._collect(errors, self._del_rule(ipr, family))
        for err in errors:
            log.warning("%s", err)
        if stack is IpStack.NONE:
            first = errors[0] if errors else NetdevError("configure", self.name, errno.EIO)
            first.add_note(f"no address family could be configured on {self.name}")
            raise first
        return AddressResult(stack, tuple(errors))

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
        new: frozenset[Network] = parse_networks(v4_networks, IPv4Network) | parse_networks(
            v6_networks, IPv6Network
        )
        async with self._lock:
            ipr = self._started()
            errors: list[NetdevError] = []
            kept_stale: set[Network] = set()
            for net in sorted(self._routes - new, key=str):
                if await self._collect(errors, self._del_route(ipr, net)) is not None:
                    kept_stale.add(net)  # retried by the next call and by close()
            for net in sorted(new, key=str):
                await self._collect(errors, self._add_route(ipr, net))
            self._routes = new | kept_stale
        for err in errors:
            log.warning("%s", err)
        return tuple(errors)

    # -- link ------------------------------------------------------------------------------

    async def set_mtu(self, mtu: int) -> None:
        check_mtu(mtu)
        async with self._lock:
            await self._set_mtu(self._started(), mtu)
            self.mtu = mtu

    async def set_up(self) -> None:
        async with self._lock:
            await self._set_up(self._started())

    async def set_txqueuelen(self, n: int) -> None:
        """The device's transmit queue length (Firezone found 10000 better than 500)."""
        check_u32("txqueuelen", n)
        async with self._lock:
            ipr = self._started()
            await self._nl(
                f"set txqueuelen {n} on", self.name, ipr.link("set", index=self._ifindex, txqlen=n)
            )

    # -- netlink steps (lock held) ---------------------------------------------------------

    def _started(self) -> Any:
        if self._ipr is None:
            state = "closed" if self._closed else "not started (call start())"
            raise RuntimeError(f"TunDeviceManager for {self.name} is {state}")
        return self._ipr

    async def _nl(
        self, op: str, obj: str, call: Awaitable[_T], ok: frozenset[int] = frozenset()
    ) -> _T | None:
        """Await one netlink call; errnos in `ok` give None, others a NetdevError."""
        try:
            return await call
        except OS_ERRORS as exc:
            code = errno_of(exc)
            if code in ok:
                return None
            raise NetdevError(op, obj, code) from exc

    @staticmethod
    async def _collect(errors: list[NetdevError], step: Awaitable[object]) -> NetdevError | None:
        """Run a step that may fail on its own without stopping the caller's other steps."""
        try:
            await step
        except NetdevError as err:
            errors.append(err)
            return err
        return None

    async def _set_mtu(self, ipr: Any, mtu: int) -> None:
        await self._nl(
            f"set MTU {mtu} on", self.name, ipr.link("set", index=self._ifindex, mtu=mtu)
        )

    async def _set_up(self, ipr: Any) -> None:
        await self._nl("set link up", self.name, ipr.link("set", index=self._ifindex, state="up"))

    async def _addresses(self, ipr: Any) -> list[Interface]:
        async def dump() -> list[Interface]:
            return [
                ip_interface(f"{msg.get('address')}/{msg['prefixlen']}")
                async for msg in await ipr.get_addr(index=self._ifindex)
            ]

        found = await self._nl("list addresses of", self.name, dump())
        return found or []

    async def _add_addr(self, ipr: Any, addr: Interface) -> None:
        # A tentative (DAD) address cannot be a source address; a tunnel has no neighbours.
        flags = IFA_F_NODAD if addr.version == 6 else 0
        call = ipr.addr(
            "add", index=self._ifindex, address=str(addr.ip), prefixlen=addr.network.prefixlen,
            flags=flags,
        )  # fmt: skip
        await self._nl("add address", f"{addr} to {self.name}", call, _EXISTS)

    async def _del_addr(self, ipr: Any, addr: Interface) -> None:
        call = ipr.addr(
            "del", index=self._ifindex, address=str(addr.ip), prefixlen=addr.network.prefixlen
        )
        await self._nl("delete address", f"{addr} from {self.name}", call, _GONE)

    def _rule_args(self, family: int) -> dict[str, int]:
        return {
            "family": family,
            "table": self.table,
            "fwmark": self.fwmark,
            "priority": self.rule_priority,
            "flags": FIB_RULE_INVERT,
        }

    def _rule_name(self, family: int) -> str:
        return (
            f"{_fam_name(family)} rule 'not fwmark 0x{self.fwmark:x} lookup {self.table}' "
            f"priority {self.rule_priority}"
        )

    async def _add_rule(self, ipr: Any, family: int) -> None:
        # EEXIST: ours from an earlier call, or a crashed run's identical rule, which is ours.
        call = ipr.rule("add", **self._rule_args(family))
        await self._nl("add", self._rule_name(family), call, _EXISTS)
        self._rule_families.add(family)

    async def _del_rule(self, ipr: Any, family: int) -> None:
        call = ipr.rule("del", **self._rule_args(family))
        await self._nl("delete", self._rule_name(family), call, _GONE)
        self._rule_families.discard(family)

    async def _add_route(self, ipr: Any, net: Network) -> None:
        call = ipr.route(
            "add", family=_family(net), dst=str(net.network_address), dst_len=net.prefixlen,
            oif=self._ifindex, table=self.table,
        )  # fmt: skip
        await self._nl("add route", f"{net} table {self.table}", call, _EXISTS)

    async def _del_route(self, ipr: Any, net: Network) -> None:
        call = ipr.route(
            "del", family=_family(net), dst=str(net.network_address), dst_len=net.prefixlen,
            table=self.table,
        )  # fmt: skip
        await self._nl("delete route", f"{net} table {self.table}", call, _GONE)

    async def _flush_table(self, ipr: Any = None) -> list[NetdevError]:
        """Delete every route in our table (both families); returns the failures."""
        ipr = ipr if ipr is not None else self._ipr
        errors: list[NetdevError] = []
        for family in _FAMILIES:
            where = f"{_fam_name(family)} table {self.table}"

            async def dump(family: int = family) -> list[Any]:
                return [m async for m in await ipr.get_routes(family=family, table=self.table)]

            # Dump fully before deleting: one socket cannot dump and take requests at once.
            try:
                routes = await self._nl("list routes of", where, dump()) or []
            except NetdevError as err:
                errors.append(err)
                continue
            for msg in routes:
                # Send the dumped message back as the delete: it matches the route exactly.
                async def delete(msg: Any = msg) -> None:
                    request = await ipr.nlm_request(
                        msg, msg_type=RTM_DELROUTE, msg_flags=NLM_F_REQUEST | NLM_F_ACK
                    )
                    async for _ in request:
                        pass

                dst = f"{msg.get('dst') or ('0.0.0.0' if family == socket.AF_INET else '::')}"
                obj = f"{dst}/{msg['dst_len']} {where}"
                await self._collect(errors, self._nl("flush route", obj, delete(), _GONE))
        return errors
