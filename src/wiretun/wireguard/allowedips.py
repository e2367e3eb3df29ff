"""Allowed-IPs: the longest-prefix table mapping inner IP addresses to peers (both ways).

Outbound it routes a packet to the peer owning its destination; inbound it checks that a
decrypted packet's source belongs to the peer that sent it. One dict per prefix length,
probed from the longest length present to the shortest, is faster in Python than walking a
bit trie; a small cache of recent addresses makes the common case one dict lookup.

Every per-owner operation costs what that owner has, not what the table has (10k peers):
each owner's prefixes are indexed, and the prefixes inside one of them (the deny entries of
`source_table`) are found by bisecting a sorted key list per length, built when first needed
after a change.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Iterator
from typing import Final, Generic, TypeVar

V = TypeVar("V")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_CACHE_LIMIT: Final = 4096


def parse_network(value: str | IPNetwork) -> IPNetwork:
    """A network from "10.0.0.0/24", "fd00::1" (a host) or a network object.

    Host bits are masked off, as `wg` does ("10.0.0.1/24" means 10.0.0.0/24). Raises
    ValueError for anything that is not an address or network.
    """
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if not isinstance(value, str):
        raise TypeError(f"allowed-ip must be a str or ip_network, not {type(value).__name__}")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(f"invalid allowed-ip {value!r}: {exc}") from None


class _Family(Generic[V]):
    """The prefixes of one address family: prefix length -> (prefix int -> owner)."""

    __slots__ = ("bits", "lengths", "owned", "sorted_keys", "tables")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.tables: dict[int, dict[int, V]] = {}
        self.lengths: list[int] = []
        self.owned: dict[V, dict[tuple[int, int], None]] = {}  # owner -> {(plen, prefix)}
        self.sorted_keys: dict[int, list[int]] = {}  # plen -> sorted prefixes, lazily

    def _reindex(self) -> None:
        self.lengths = sorted((n for n, t in self.tables.items() if t), reverse=True)

    def set(self, plen: int, prefix: int, value: V) -> V | None:
        table = self.tables.setdefault(plen, {})
        old = table.get(prefix)
        table[prefix] = value
        if old is not None:
            self._disown(old, plen, prefix)
        else:
            self.sorted_keys.pop(plen, None)
        self.owned.setdefault(value, {})[(plen, prefix)] = None
        if plen not in self.lengths:
            self._reindex()
        return old

    def _disown(self, value: V, plen: int, prefix: int) -> None:
        mine = self.owned.get(value)
        if mine is not None:
            mine.pop((plen, prefix), None)
            if not mine:
                del self.owned[value]

    def delete(self, plen: int, prefix: int) -> None:
        table = self.tables.get(plen)
        if table is not None and prefix in table:
            self._disown(table.pop(prefix), plen, prefix)
            self.sorted_keys.pop(plen, None)
            if not table:
                self._reindex()

    def of(self, value: V) -> list[tuple[int, int]]:
        """(plen, prefix) of what `value` owns, longest prefixes first."""
        return sorted(self.owned.get(value, ()), key=lambda e: (-e[0], e[1]))

    def inside(self, plen: int, prefix: int, longer: int) -> Iterator[tuple[int, V]]:
        """The prefixes of length `longer` inside plen/prefix, with their owners."""
        keys = self.sorted_keys.get(longer)
        if keys is None:
            keys = self.sorted_keys[longer] = sorted(self.tables[longer])
        shift = longer - plen
        lo, hi = prefix << shift, (prefix + 1) << shift
        table = self.tables[longer]
        for i in range(bisect.bisect_left(keys, lo), bisect.bisect_left(keys, hi)):
            yield keys[i], table[keys[i]]

    def source_table(self, value: V, pad: int) -> bytes:
        """See AllowedIPs.source_table: entries of address, length, allow, `pad` zeros."""
        bits = self.bits
        nbytes = bits // 8
        own = self.of(value)
        entries = [(p, n, 1) for n, p in own]
        for n, p in own:
            for longer in self.lengths:
                if longer <= n:
                    break  # lengths run longest first
                entries += [(q, longer, 0) for q, v in self.inside(n, p, longer) if v is not value]
        tail = bytes(pad)
        return b"".join(
            (p << (bits - n)).to_bytes(nbytes, "big") + bytes((n, allow)) + tail
            for p, n, allow in entries
        )

    def lookup(self, addr: int) -> V | None:
        bits = self.bits
        tables = self.tables
        for plen in self.lengths:
            value = tables[plen].get(addr >> (bits - plen))
            if value is not None:
                return value
        return None


class AllowedIPs(Generic[V]):
    """Prefixes owned by values (peers); each prefix has exactly one owner.

    Inserting a prefix another owner holds moves it, as WireGuard does.
    """

    __slots__ = ("_cache", "_tables", "_v4", "_v6")

    def __init__(self) -> None:
        self._v4: _Family[V] = _Family(32)
        self._v6: _Family[V] = _Family(128)
        self._cache: dict[bytes, V | None] = {}
        self._tables: dict[V, tuple[bytes, bytes]] = {}

    @property
    def cache(self) -> dict[bytes, V | None]:
        """Address -> owner (or None) for recent lookups; always the same dict object and
        cleared on every change, so a hot loop may hold its `.get` across a batch. A None
        from `.get` means "call lookup" (a miss, or an address with no owner)."""
        return self._cache

    def _changed(self) -> None:
        self._cache.clear()
        self._tables.clear()

    def source_table(self, value: V) -> tuple[bytes, bytes]:
        """`value`'s inbound source check as flat tables for the batch data path
        (wiretun.datapath): (IPv4 entries of 8 bytes, IPv6 entries of 24), each the network
        address, the prefix length and 1 (allow: `value` owns it) or 0 (deny: a longer
        prefix inside one of `value`'s, owned by another). The longest matching entry decides,
        which is exactly "`lookup(source)` is `value`". Built on first use after a change."""
        tables = self._tables.get(value)
        if tables is None:
            tables = self._tables[value] = (
                self._v4.source_table(value, 2),
                self._v6.source_table(value, 6),
            )
        return tables

    def _family(self, net: IPNetwork) -> _Family[V]:
        return self._v4 if net.version == 4 else self._v6

    def insert(self, network: str | IPNetwork, value: V) -> IPNetwork:
        """Give `network` to `value` (taking it from a previous owner). Returns the network."""
        net = parse_network(network)
        fam = self._family(net)
        fam.set(net.prefixlen, int(net.network_address) >> (fam.bits - net.prefixlen), value)
        self._changed()
        return net

    def remove(self, network: str | IPNetwork, value: V) -> bool:
        """Remove `network` if `value` owns it; True if something was removed."""
        net = parse_network(network)
        fam = self._family(net)
        prefix = int(net.network_address) >> (fam.bits - net.prefixlen)
        table = fam.tables.get(net.prefixlen, {})
        if table.get(prefix) is not value:
            return False
        fam.delete(net.prefixlen, prefix)
        self._changed()
        return True

    def remove_value(self, value: V) -> None:
        """Remove every prefix `value` owns."""
        changed = False
        for fam in (self._v4, self._v6):
            for plen, prefix in list(fam.owned.get(value, ())):
                fam.delete(plen, prefix)
                changed = True
        if changed:
            self._changed()

    def networks(self, value: V) -> Iterator[IPNetwork]:
        """The prefixes `value` owns, IPv4 first, longest prefixes first (then by address)."""
        for fam, cls in (
            (self._v4, ipaddress.IPv4Network),
            (self._v6, ipaddress.IPv6Network),
        ):
            for plen, prefix in fam.of(value):
                yield cls((prefix << (fam.bits - plen), plen))

    def owner(self, network: str | IPNetwork) -> V | None:
        """The exact owner of `network` (not a longest-prefix match), or None."""
        net = parse_network(network)
        fam = self._family(net)
        prefix = int(net.network_address) >> (fam.bits - net.prefixlen)
        return fam.tables.get(net.prefixlen, {}).get(prefix)

    def lookup(self, addr: bytes) -> V | None:
        """The owner of the longest prefix containing `addr` (4 or 16 bytes), or None."""
        cache = self._cache
        if addr in cache:
            return cache[addr]
        n = len(addr)
        if n == 4:
            value = self._v4.lookup(int.from_bytes(addr, "big"))
        elif n == 16:
            value = self._v6.lookup(int.from_bytes(addr, "big"))
        else:
            return None
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[addr] = value
        return value

    def update(self, networks: Iterable[str | IPNetwork], value: V) -> list[IPNetwork]:
        """Insert several prefixes for `value`; all are parsed before any is inserted."""
        nets = [parse_network(n) for n in networks]
        for net in nets:
            self.insert(net, value)
        return nets
