"""The netlink steps on one link and its routing table, each raising a NetdevError that names it."""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable
from ipaddress import ip_interface
from typing import Any, TypeVar

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_DELROUTE

from wiretun.netdev.errors import OS_ERRORS, NetdevError, errno_of
from wiretun.netdev.spec import Interface, Network

_T = TypeVar("_T")

FIB_RULE_INVERT = 0x2
IFA_F_NODAD = 0x2
IN6_ADDR_GEN_MODE_NONE = 1
FAMILIES = (socket.AF_INET, socket.AF_INET6)
# Deleting something already gone is the outcome we wanted (ESRCH is IPv4's "no such route").
GONE = frozenset({errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL})
EXISTS = frozenset({errno.EEXIST})


def family_of(obj: Interface | Network) -> socket.AddressFamily:
    return socket.AF_INET if obj.version == 4 else socket.AF_INET6


def family_name(family: int) -> str:
    return "IPv4" if family == socket.AF_INET else "IPv6"


async def nl_call(
    op: str, obj: str, call: Awaitable[_T], ok: frozenset[int] = frozenset()
) -> _T | None:
    """Await one netlink call; errnos in `ok` give None, others a NetdevError."""
    try:
        return await call
    except OS_ERRORS as exc:
        code = errno_of(exc)
        if code in ok:
            return None
        raise NetdevError(op, obj, code) from exc


async def collect(errors: list[NetdevError], step: Awaitable[object]) -> NetdevError | None:
    """Run a step that may fail on its own without stopping the caller's other steps."""
    try:
        await step
    except NetdevError as err:
        errors.append(err)
        return err
    return None


async def lookup_link(ipr: Any, name: str) -> int:
    found = await nl_call("look up link", name, ipr.link_lookup(ifname=name))
    if not found:
        raise NetdevError("look up link", name, errno.ENODEV)
    return int(found[0])


async def used_tables(ipr: Any) -> set[int]:
    """Every table number that has a route, or that a policy rule looks up or matches as
    its fwmark, in either family (a table we take also serves as our mark)."""

    async def dump() -> set[int]:
        used: set[int] = set()
        for family in FAMILIES:
            async for msg in await ipr.get_routes(family=family):
                used.add(int(msg.get("table") or 0))
            async for msg in await ipr.get_rules(family=family):
                used.add(int(msg.get("table") or 0))
                used.add(int(msg.get("fwmark") or 0))
        return used

    return await nl_call("list", "routes and rules", dump()) or set()


class LinkOps:
    """Steps on one link (by index) and one table; the caller serialises them."""

    def __init__(
        self, ipr: Any, name: str, ifindex: int, *, table: int, fwmark: int, rule_priority: int
    ) -> None:
        self.ipr = ipr
        self.name = name
        self.ifindex = ifindex
        self.table = table
        self.fwmark = fwmark
        self.rule_priority = rule_priority

    def _link_set(self, op: str, **attrs: Any) -> Awaitable[Any]:
        return nl_call(op, self.name, self.ipr.link("set", index=self.ifindex, **attrs))

    async def set_mtu(self, mtu: int) -> None:
        await self._link_set(f"set MTU {mtu} on", mtu=mtu)

    async def set_up(self) -> None:
        await self._link_set("set link up", state="up")

    async def set_txqueuelen(self, n: int) -> None:
        await self._link_set(f"set txqueuelen {n} on", txqlen=n)

    async def disable_link_local(self) -> None:
        mode = ("IFLA_INET6_ADDR_GEN_MODE", IN6_ADDR_GEN_MODE_NONE)
        spec = {"attrs": [("AF_INET6", {"attrs": [mode]})]}
        await self._link_set("disable IPv6 link-local on", IFLA_AF_SPEC=spec)

    async def addresses(self) -> list[Interface]:
        async def dump() -> list[Interface]:
            return [
                ip_interface(f"{msg.get('address')}/{msg['prefixlen']}")
                async for msg in await self.ipr.get_addr(index=self.ifindex)
            ]

        return await nl_call("list addresses of", self.name, dump()) or []

    async def add_addr(self, addr: Interface) -> None:
        # A tentative (DAD) address cannot be a source address; a tunnel has no neighbours.
        flags = IFA_F_NODAD if addr.version == 6 else 0
        call = self.ipr.addr(
            "add", index=self.ifindex, address=str(addr.ip), prefixlen=addr.network.prefixlen,
            flags=flags,
        )  # fmt: skip
        await nl_call("add address", f"{addr} to {self.name}", call, EXISTS)

    async def del_addr(self, addr: Interface) -> None:
        call = self.ipr.addr(
            "del", index=self.ifindex, address=str(addr.ip), prefixlen=addr.network.prefixlen
        )
        await nl_call("delete address", f"{addr} from {self.name}", call, GONE)

    def _rule(self, family: int) -> tuple[str, dict[str, int]]:
        name = (
            f"{family_name(family)} rule 'not fwmark 0x{self.fwmark:x} lookup {self.table}' "
            f"priority {self.rule_priority}"
        )
        args = {
            "family": family,
            "table": self.table,
            "fwmark": self.fwmark,
            "priority": self.rule_priority,
            "flags": FIB_RULE_INVERT,
        }
        return name, args

    async def add_rule(self, family: int) -> None:
        # EEXIST: ours from an earlier call, or a crashed run's identical rule, which is ours.
        name, args = self._rule(family)
        await nl_call("add", name, self.ipr.rule("add", **args), EXISTS)

    async def del_rule(self, family: int) -> None:
        name, args = self._rule(family)
        await nl_call("delete", name, self.ipr.rule("del", **args), GONE)

    async def add_route(self, net: Network) -> None:
        call = self.ipr.route(
            "add", family=family_of(net), dst=str(net.network_address), dst_len=net.prefixlen,
            oif=self.ifindex, table=self.table,
        )  # fmt: skip
        await nl_call("add route", f"{net} table {self.table}", call, EXISTS)

    async def del_route(self, net: Network) -> None:
        call = self.ipr.route(
            "del", family=family_of(net), dst=str(net.network_address), dst_len=net.prefixlen,
            table=self.table,
        )  # fmt: skip
        await nl_call("delete route", f"{net} table {self.table}", call, GONE)

    async def flush_table(self) -> list[NetdevError]:
        """Delete every route in our table, whoever put it there; returns the failures."""
        errors: list[NetdevError] = []
        for family in FAMILIES:
            where = f"{family_name(family)} table {self.table}"
            # Dump fully before deleting: one socket cannot dump and take requests at once.
            try:
                routes = await nl_call("list routes of", where, self._dump_routes(family)) or []
            except NetdevError as err:
                errors.append(err)
                continue
            for msg in routes:
                dst = msg.get("dst") or ("0.0.0.0" if family == socket.AF_INET else "::")
                obj = f"{dst}/{msg['dst_len']} {where}"
                await collect(
                    errors, nl_call("flush route", obj, self._delete_as_dumped(msg), GONE)
                )
        return errors

    async def _dump_routes(self, family: int) -> list[Any]:
        return [m async for m in await self.ipr.get_routes(family=family, table=self.table)]

    async def _delete_as_dumped(self, msg: Any) -> None:
        # The dumped message sent back as a delete matches that route exactly (type, metric).
        request = await self.ipr.nlm_request(
            msg, msg_type=RTM_DELROUTE, msg_flags=NLM_F_REQUEST | NLM_F_ACK
        )
        async for _ in request:
            pass
