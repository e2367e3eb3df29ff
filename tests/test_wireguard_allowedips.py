"""Longest-prefix allowed-ips lookups, ownership moves and removal."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wiretun.wireguard.allowedips import AllowedIPs, parse_network


def a4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def a6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def test_longest_prefix_v4_v6() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("0.0.0.0/0", "default")
    t.insert("10.0.0.0/8", "a")
    t.insert("10.1.0.0/16", "b")
    t.insert("10.1.2.3/32", "c")
    t.insert("fd00::/8", "v6a")
    t.insert("fd00:1::/32", "v6b")
    assert t.lookup(a4("10.1.2.3")) == "c"
    assert t.lookup(a4("10.1.2.4")) == "b"
    assert t.lookup(a4("10.2.0.1")) == "a"
    assert t.lookup(a4("192.168.0.1")) == "default"
    assert t.lookup(a6("fd00:1::5")) == "v6b"
    assert t.lookup(a6("fd00:2::5")) == "v6a"
    assert t.lookup(a6("2001:db8::1")) is None
    assert t.lookup(b"\x01\x02") is None


def test_host_bits_masked_and_moves_between_owners() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    assert t.insert("10.0.0.7/24", "a") == ipaddress.ip_network("10.0.0.0/24")
    assert t.lookup(a4("10.0.0.99")) == "a"
    t.insert("10.0.0.0/24", "b")  # another peer takes it over
    assert t.lookup(a4("10.0.0.99")) == "b"
    assert list(t.networks("a")) == []
    assert list(t.networks("b")) == [ipaddress.ip_network("10.0.0.0/24")]
    assert not t.remove("10.0.0.0/24", "a")  # not a's any more
    assert t.remove("10.0.0.0/24", "b")
    assert t.lookup(a4("10.0.0.99")) is None


def test_remove_value_and_cache_invalidation() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    t.update(["10.0.0.0/24", "fd00::/64", "10.9.9.9"], "a")
    t.insert("10.0.0.0/16", "b")
    assert t.lookup(a4("10.0.0.1")) == "a"  # now cached
    t.remove_value("a")
    assert t.lookup(a4("10.0.0.1")) == "b"
    assert t.owner("10.0.0.0/16") == "b"
    assert list(t.networks("a")) == []


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="invalid allowed-ip"):
        parse_network("10.0.0.0/33")
    with pytest.raises(ValueError, match="invalid allowed-ip"):
        parse_network("nonsense")
    with pytest.raises(TypeError):
        parse_network(5)  # type: ignore[arg-type]


nets4 = st.builds(
    lambda addr, plen: ipaddress.ip_network((addr, plen), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(nets4, st.integers(0, 3)), max_size=30),
    st.lists(st.integers(0, 2**32 - 1), max_size=30),
)
def test_matches_linear_scan(
    entries: list[tuple[ipaddress.IPv4Network, int]], addrs: list[int]
) -> None:
    t: AllowedIPs[int] = AllowedIPs()
    model: dict[ipaddress.IPv4Network, int] = {}
    for net, owner in entries:
        t.insert(net, owner)
        model[net] = owner
    for value in addrs:
        addr = ipaddress.IPv4Address(value)
        matches = [n for n in model if addr in n]
        expected = model[max(matches, key=lambda n: n.prefixlen)] if matches else None
        assert t.lookup(addr.packed) == expected


@given(
    prefixes=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 2**32 - 1), st.integers(0, 32)), max_size=12
    ),
    v6=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 2**128 - 1), st.integers(0, 128)), max_size=6
    ),
    probes=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20),
)
@settings(max_examples=200, deadline=None)
def test_source_table_agrees_with_lookup(
    prefixes: list[tuple[int, int, int]], v6: list[tuple[int, int, int]], probes: list[int]
) -> None:
    """The batch data path's flat source check says "allowed" exactly when lookup() names the
    peer: longer prefixes of other peers inside a peer's own are denied."""
    from wiretun.datapath.pure import source_allowed

    table: AllowedIPs[str] = AllowedIPs()
    owners = ["a", "b", "c"]
    for who, addr, plen in prefixes:
        table.insert(ipaddress.IPv4Network((addr >> (32 - plen) << (32 - plen), plen)), owners[who])
    for who, addr, plen in v6:
        table.insert(
            ipaddress.IPv6Network((addr >> (128 - plen) << (128 - plen), plen)), owners[who]
        )
    # Probe inside every prefix too, not only at random.
    addrs = [p.to_bytes(4, "big") for p in probes] + [a.to_bytes(4, "big") for _, a, _ in prefixes]
    addrs += [a.to_bytes(16, "big") for _, a, _ in v6]
    for name in owners:
        t4, t6 = table.source_table(name)
        for probe in addrs:
            want = table.lookup(probe) == name
            assert source_allowed(t4 if len(probe) == 4 else t6, probe) == want, (name, probe)


def test_source_table_is_rebuilt_after_a_change() -> None:
    from wiretun.datapath.pure import source_allowed

    table: AllowedIPs[str] = AllowedIPs()
    table.insert("10.0.0.0/8", "a")
    assert source_allowed(table.source_table("a")[0], bytes([10, 1, 1, 1]))
    table.insert("10.1.0.0/16", "b")
    assert not source_allowed(table.source_table("a")[0], bytes([10, 1, 1, 1]))
    assert source_allowed(table.source_table("b")[0], bytes([10, 1, 1, 1]))


@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["insert", "remove", "remove_value"]),
            st.integers(0, 3),
            st.integers(0, 2**32 - 1),
            st.integers(0, 32),
        ),
        max_size=40,
    )
)
@settings(max_examples=200, deadline=None)
def test_per_owner_index_matches_the_table(ops: list[tuple[str, int, int, int]]) -> None:
    """networks() (now read from a per-owner index, #15) lists exactly what a scan of the
    table finds, through inserts that move prefixes, removals and remove_value."""
    table: AllowedIPs[int] = AllowedIPs()
    model: dict[ipaddress.IPv4Network, int] = {}
    for op, owner, addr, plen in ops:
        net = ipaddress.IPv4Network((addr >> (32 - plen) << (32 - plen), plen))
        if op == "insert":
            table.insert(net, owner)
            model[net] = owner
        elif op == "remove":
            if table.remove(net, owner):
                del model[net]
            assert net not in model or model[net] != owner
        else:
            table.remove_value(owner)
            model = {n: o for n, o in model.items() if o != owner}
    for owner in range(4):
        want = sorted((n for n, o in model.items() if o == owner),
                      key=lambda n: (-n.prefixlen, int(n.network_address)))  # fmt: skip
        assert list(table.networks(owner)) == want
        assert all(table.owner(n) == owner for n in want)


def _best_of(fn: object, repeat: int = 5) -> float:
    import time

    assert callable(fn)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def test_per_owner_operations_do_not_scan_every_prefix() -> None:
    """Regression (#15): networks(), remove_value() and source_table() scanned every prefix
    of every owner, so `wg show` and `up` of 10k peers were quadratic. Now one owner's work
    does not grow with the others' (a generous ratio: the old code was ~100x here)."""

    def build(owners: int) -> AllowedIPs[int]:
        table: AllowedIPs[int] = AllowedIPs()
        for i in range(owners):
            table.insert(ipaddress.IPv4Network((0x0A000000 + i, 32)), i)
        table.insert("10.0.0.0/8", -1)  # a covering prefix: its own deny entries are many
        return table

    small, large = build(100), build(10_000)

    def per_owner(table: AllowedIPs[int]) -> None:
        for owner in range(50):  # what a UAPI replace_allowed_ips does, and a `get`
            nets = list(table.networks(owner))
            table.remove_value(owner)
            table.update(nets, owner)

    ratio = _best_of(lambda: per_owner(large)) / _best_of(lambda: per_owner(small))
    assert ratio < 10, ratio
    # And the covering owner's source table denies exactly the 10000 /32s inside it.
    t4, _ = large.source_table(-1)
    assert len(t4) == 8 * (1 + 10_000)
