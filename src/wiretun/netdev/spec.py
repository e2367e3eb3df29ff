"""Defaults and input checks for the device manager, run before anything touches the system."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import Literal, TypeVar

# "WT" in ASCII. The mark on sockets that must bypass the tunnel, and our routing table's id;
# wg-quick's FwMark / Table override them.
DEFAULT_FWMARK = 0x5754
DEFAULT_TABLE = 0x5754
# Before the main table (32766), after anything an administrator put in the low range.
# Several devices share it: their rules differ in table and mark.
DEFAULT_RULE_PRIORITY = 0x5754
# table="auto" probes upward from here for a table nobody uses, as wg-quick does.
AUTO_TABLE_START = 51820
DEFAULT_MTU = 1280
# Firezone measured 10000 better than the kernel default of 500 for a TUN.
DEFAULT_TXQUEUELEN = 10000

IPV4_MIN_MTU = 68
IPV6_MIN_MTU = 1280
MAX_MTU = 65535
U32_MAX = 0xFFFFFFFF
# RT_TABLE_UNSPEC, COMPAT, DEFAULT, MAIN, LOCAL: not ours to flush.
RESERVED_TABLES = frozenset({0, 252, 253, 254, 255})
RULE_PRIORITY_MAX = 32765

# A table number, "auto" (a free one, picked by start()) or "off" (no rules, no routes).
TableSpec = int | Literal["auto", "off"]
Interface = IPv4Interface | IPv6Interface
Network = IPv4Network | IPv6Network

_N = TypeVar("_N", IPv4Network, IPv6Network)


def check_mtu(mtu: int) -> int:
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not IPV4_MIN_MTU <= mtu <= MAX_MTU:
        raise ValueError(f"MTU must be an int in {IPV4_MIN_MTU}..{MAX_MTU}, got {mtu!r}")
    return mtu


def check_u32(what: str, value: int, *, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= U32_MAX:
        raise ValueError(f"{what} must be an int in {low}..0x{U32_MAX:x}, got {value!r}")
    return value


def check_table(table: int) -> int:
    check_u32("routing table", table, low=1)
    if table in RESERVED_TABLES:
        raise ValueError(f"routing table {table} is reserved (unspec/compat/default/main/local)")
    return table


def check_rule_priority(priority: int) -> int:
    bad_type = isinstance(priority, bool) or not isinstance(priority, int)
    if bad_type or not 0 < priority <= RULE_PRIORITY_MAX:
        raise ValueError(
            f"rule priority must be an int in 1..{RULE_PRIORITY_MAX}, got {priority!r}"
        )
    return priority


def parse_networks(items: Iterable[Network | str], cls: type[_N]) -> frozenset[_N]:
    """Routes of one family: strict CIDR (no host bits), right family, raises ValueError."""
    version = 4 if cls is IPv4Network else 6
    family = f"IPv{version}"
    if isinstance(items, str | bytes):
        raise TypeError(f"{family} routes must be a list of networks, not one string {items!r}")
    out: set[_N] = set()
    for item in items:
        if not isinstance(item, str | IPv4Network | IPv6Network):
            raise TypeError(f"{family} route must be a str or ip_network, got {item!r}")
        try:
            net = ipaddress.ip_network(item, strict=True)
        except ValueError as exc:
            raise ValueError(f"invalid {family} route {item!r}: {exc}") from None
        if net.version != version:
            raise ValueError(f"{family} route list got an IPv{net.version} network: {net}")
        out.add(net)  # type: ignore[arg-type]  # the version check above narrows it
    return frozenset(out)


def parse_interfaces(items: Iterable[Interface | str]) -> tuple[Interface, ...]:
    """Addresses with prefix ("10.0.0.1/24", "fd00::1/64"), de-duplicated in order."""
    if isinstance(items, str | bytes):
        raise TypeError(f"addresses must be a list, not one string {items!r}")
    out: dict[Interface, None] = {}
    for item in items:
        if not isinstance(item, str | IPv4Interface | IPv6Interface):
            raise TypeError(f"address must be a str or ip_interface, got {item!r}")
        try:
            iface = ipaddress.ip_interface(item)
        except ValueError as exc:
            raise ValueError(f"invalid address {item!r}: {exc}") from None
        ip = iface.ip
        if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
            raise ValueError(f"address {iface} cannot be assigned to a tunnel device")
        out[iface] = None
    return tuple(out)


def parse_host(value: IPv4Address | IPv6Address | str | None, version: int) -> Interface | None:
    """`set_ips`' single address of one family, as a /32 or /128 (None stays None)."""
    if value is None:
        return None
    if not isinstance(value, str | IPv4Address | IPv6Address):
        raise TypeError(f"IPv{version} address must be a str or ip_address, got {value!r}")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError as exc:
        raise ValueError(f"invalid IPv{version} address {value!r}: {exc}") from None
    if ip.version != version:
        raise ValueError(f"expected an IPv{version} address, got IPv{ip.version} {ip}")
    (iface,) = parse_interfaces([f"{ip}/{ip.max_prefixlen}"])
    return iface
