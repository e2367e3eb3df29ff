"""TunDeviceManager against a real kernel, in namespaces the tests create; every assertion reads
the kernel's state (ip -j) or observes traffic, never the manager's own bookkeeping."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import ipaddress
import json
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from wiretun.lab.netns import NetNS, Topology, unique_name
from wiretun.netdev import (
    DEFAULT_FWMARK,
    DEFAULT_TABLE,
    AddressResult,
    IpStack,
    NetdevError,
    TunDeviceManager,
    mark_socket,
)
from wiretun.packet import dst_addr

pytestmark = pytest.mark.root

T = TypeVar("T")
TABLE = str(DEFAULT_TABLE)
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def tun_ns(topology: Topology) -> tuple[NetNS, str]:
    """A namespace holding one persistent TUN device (nobody attached: carrier off)."""
    ns = topology.netns()
    dev = unique_name("wtn")
    ns.run("ip", "tuntap", "add", "dev", dev, "mode", "tun")
    return ns, dev


def in_ns(ns: NetNS, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with ns.enter():
        return asyncio.run(main())


def ipj(ns: NetNS, *args: str) -> list[dict[str, Any]]:
    out = ns.run("ip", "-j", *args).strip()
    return json.loads(out) if out else []


def addresses(ns: NetNS, dev: str) -> set[tuple[str, int]]:
    (link,) = ipj(ns, "addr", "show", "dev", dev)
    return {(a["local"], a["prefixlen"]) for a in link["addr_info"]}


def our_rules(ns: NetNS, family: str) -> list[dict[str, Any]]:
    return [r for r in ipj(ns, family, "rule", "show") if r.get("table") == TABLE]


def our_routes(ns: NetNS, family: str) -> set[str]:
    """Destinations in our table, read from a dump of all tables (ours may not exist yet)."""
    routes = ipj(ns, family, "route", "show", "table", "all")
    return {r["dst"] for r in routes if r.get("table") == TABLE}


def kernel_state(ns: NetNS) -> tuple[str, ...]:
    return tuple(
        ns.run("ip", *args)
        for args in (
            ("addr",),
            ("rule",),
            ("-6", "rule"),
            ("route", "show", "table", "all"),
            ("-6", "route", "show", "table", "all"),
        )
    )


def test_addresses_prefixes_mtu_and_link(topology: Topology) -> None:
    ns, dev = tun_ns(topology)

    async def main() -> IpStack:
        async with TunDeviceManager(dev, mtu=1420) as mgr:
            result = await mgr.set_ips("10.9.0.1", "fd00::1")
            assert result.errors == ()
            return result.stack

    assert in_ns(ns, main) == IpStack.DUAL
    assert addresses(ns, dev) == {("10.9.0.1", 32), ("fd00::1", 128)}  # no fe80:: either
    (link,) = ipj(ns, "-d", "link", "show", dev)
    assert link["mtu"] == 1420
    assert "UP" in link["flags"]
    assert link["inet6_addr_gen_mode"] == "none"


def test_set_addresses_takes_any_prefix_and_replaces(topology: Topology) -> None:
    ns, dev = tun_ns(topology)
    ns.run("ip", "addr", "add", "192.0.2.7/24", "dev", dev)  # foreign: must go

    async def main() -> list[set[tuple[str, int]]]:
        seen = []
        async with TunDeviceManager(dev) as mgr:
            wanted = ["10.0.0.1/24", "10.0.1.1/24", "fd00::1/64"]
            assert (await mgr.set_addresses(wanted)).stack == IpStack.DUAL
            seen.append(addresses(ns, dev))
            assert (await mgr.set_addresses(["10.0.0.1/24", "fd00::2/64"])).stack == IpStack.DUAL
            seen.append(addresses(ns, dev))
        return seen

    first, second = in_ns(ns, main)
    assert first == {("10.0.0.1", 24), ("10.0.1.1", 24), ("fd00::1", 64)}
    assert second == {("10.0.0.1", 24), ("fd00::2", 64)}


def test_rules_present_once_after_two_set_ips(topology: Topology) -> None:
    ns, dev = tun_ns(topology)

    async def main() -> None:
        async with TunDeviceManager(dev) as mgr:
            await mgr.set_ips("10.9.0.1", "fd00::1")
            await mgr.set_ips("10.9.0.1", "fd00::1")
            for family in ("-4", "-6"):
                rules = our_rules(ns, family)
                assert len(rules) == 1, rules
                (rule,) = rules
                assert "not" in rule
                assert int(rule["fwmark"], 16) == DEFAULT_FWMARK
                assert rule["priority"] < 32766  # before the main table

    in_ns(ns, main)


def test_family_dropped_by_set_ips_loses_its_rule(topology: Topology) -> None:
    ns, dev = tun_ns(topology)

    async def main() -> None:
        async with TunDeviceManager(dev) as mgr:
            await mgr.set_ips("10.9.0.1", "fd00::1")
            result = await mgr.set_ips("10.9.0.2", None)
            assert result.stack == IpStack.V4
            assert addresses(ns, dev) == {("10.9.0.2", 32)}
            assert len(our_rules(ns, "-4")) == 1
            assert our_rules(ns, "-6") == []

    in_ns(ns, main)


def test_routes_diffed_across_three_calls(topology: Topology) -> None:
    ns, dev = tun_ns(topology)

    async def main() -> list[tuple[set[str], set[str]]]:
        seen = []
        async with TunDeviceManager(dev) as mgr:
            await mgr.set_ips("10.9.0.1", "fd00::1")
            calls = [
                (["10.1.0.0/16", "10.2.0.0/16", "0.0.0.0/0"], ["fd01::/64"]),
                (["10.2.0.0/16", "10.3.0.0/16"], ["fd01::/64", "fd02::/64"]),
                (["10.3.0.0/16"], []),
            ]
            for v4, v6 in calls:
                assert await mgr.set_routes(v4, v6) == ()
                seen.append((our_routes(ns, "-4"), our_routes(ns, "-6")))
            # A route the kernel lost (link flap) comes back with the next call.
            ns.run("ip", "route", "del", "10.3.0.0/16", "table", TABLE)
            assert await mgr.set_routes(["10.3.0.0/16"], []) == ()
            seen.append((our_routes(ns, "-4"), our_routes(ns, "-6")))
        return seen

    first, second, third, restored = in_ns(ns, main)
    assert first == ({"10.1.0.0/16", "10.2.0.0/16", "default"}, {"fd01::/64"})
    assert second == ({"10.2.0.0/16", "10.3.0.0/16"}, {"fd01::/64", "fd02::/64"})
    assert third == ({"10.3.0.0/16"}, set())
    assert restored == ({"10.3.0.0/16"}, set())


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def _drain(fd: int, quiet: float = 0.5, limit: float = 5.0) -> list[bytes]:
    """Read what arrives on `fd` until it has been quiet for `quiet` seconds."""
    got: list[bytes] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and select.select([fd], [], [], quiet)[0]:
        got.append(os.read(fd, 65535))
    return got


def _datagrams(sock: socket.socket, quiet: float = 0.5, limit: float = 5.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and select.select([sock], [], [], quiet)[0]:
        got.append(sock.recv(65535))
    return got


@pytest.mark.parametrize("version", [4, 6])
def test_marked_socket_bypasses_table_unmarked_uses_it(topology: Topology, version: int) -> None:
    a, b = topology.netns(), topology.netns()
    ips: tuple[str | None, str | None]
    if version == 4:
        veth_a, _ = topology.veth(a, b, "10.0.0.1/24", "10.0.0.2/24")
        peer, family, ips = "10.0.0.2", socket.AF_INET, ("10.9.0.1", None)
        routes: tuple[list[str], list[str]] = ([f"{peer}/32"], [])
    else:
        veth_a, _ = topology.veth(a, b, "fd10::1/64", "fd10::2/64")
        peer, family, ips = "fd10::2", socket.AF_INET6, (None, "fd00::1")
        routes = ([], [f"{peer}/128"])
    dev = unique_name("wtn")
    a.run("ip", "tuntap", "add", "dev", dev, "mode", "tun")

    with b.enter():
        server = socket.socket(family, socket.SOCK_DGRAM)
    server.bind((peer, 0))
    port = server.getsockname()[1]
    with a.enter():
        tun_fd = _open_tun(dev)  # attached: carrier on, and we see what the kernel routes in
        unmarked = socket.socket(family, socket.SOCK_DGRAM)
        marked = socket.socket(family, socket.SOCK_DGRAM)
    try:

        async def main() -> None:
            async with TunDeviceManager(dev) as mgr:
                assert (await mgr.set_ips(*ips)).errors == ()
                assert await mgr.set_routes(*routes) == ()
                mgr.mark_socket(marked)
                check_traffic()

        def check_traffic() -> None:
            ip_flag = f"-{version}"
            # The kernel's own lookup for each mark.
            (via_table,) = ipj(a, ip_flag, "route", "get", peer, "mark", "0")
            (via_main,) = ipj(a, ip_flag, "route", "get", peer, "mark", str(DEFAULT_FWMARK))
            assert via_table["dev"] == dev
            assert via_main["dev"] == veth_a

            unmarked.sendto(b"sent-unmarked", (peer, port))
            marked.sendto(b"sent-marked", (peer, port))

            on_tun = [
                p for p in _drain(tun_fd) if p.endswith(b"-unmarked") or p.endswith(b"-marked")
            ]
            assert len(on_tun) == 1
            assert on_tun[0].endswith(b"sent-unmarked")
            assert dst_addr(on_tun[0]) == ipaddress.ip_address(peer).packed
            assert _datagrams(server) == [b"sent-marked"]

        in_ns(a, main)
    finally:
        for s in (server, unmarked, marked):
            s.close()
        os.close(tun_fd)


def test_close_leaves_no_rule_route_or_table_entry(topology: Topology) -> None:
    ns, dev = tun_ns(topology)
    main_before = ns.run("ip", "route", "show", "table", "main")

    async def main() -> None:
        async with TunDeviceManager(dev) as mgr:
            await mgr.set_ips("10.9.0.1", "fd00::1")
            await mgr.set_routes(["10.1.0.0/16", "0.0.0.0/0"], ["fd01::/64", "::/0"])
            # Somebody else's entry in our table goes too: the table is ours.
            ns.run("ip", "route", "add", "unreachable", "10.77.0.0/16", "table", TABLE)
            assert len(our_routes(ns, "-4")) == 3
            assert len(our_rules(ns, "-6")) == 1

    in_ns(ns, main)
    for family in ("-4", "-6"):
        assert our_rules(ns, family) == []
        assert our_routes(ns, family) == set()
    assert ns.run("ip", "route", "show", "table", "main") == main_before


def test_start_flushes_leftovers_of_a_crashed_run(topology: Topology) -> None:
    ns, dev = tun_ns(topology)
    ns.run("ip", "route", "add", "unreachable", "10.50.0.0/16", "table", TABLE)
    ns.run("ip", "-6", "route", "add", "unreachable", "fd50::/64", "table", TABLE)
    ns.run("ip", "route", "add", "unreachable", "10.51.0.0/16")  # main table: not ours
    assert our_routes(ns, "-4") == {"10.50.0.0/16"}

    async def main() -> None:
        mgr = TunDeviceManager(dev)
        await mgr.start()
        assert our_routes(ns, "-4") == set()
        assert our_routes(ns, "-6") == set()
        await mgr.close()

    in_ns(ns, main)
    assert "10.51.0.0/16" in ns.run("ip", "route", "show", "table", "main")


def test_bad_input_raises_before_touching_the_system(topology: Topology) -> None:
    ns, dev = tun_ns(topology)
    bad_calls: list[tuple[str, Callable[[TunDeviceManager], Coroutine[Any, Any, object]]]] = [
        ("10.0.0.0/33", lambda m: m.set_routes(["10.0.0.0/33"], [])),
        ("IPv4 route list", lambda m: m.set_routes(["10.2.0.0/16", "fd00::/64"], [])),
        ("IPv6 route list", lambda m: m.set_routes([], ["10.2.0.0/16"])),
        ("host bits set", lambda m: m.set_routes(["10.2.0.1/16"], [])),
        ("invalid address", lambda m: m.set_addresses(["10.0.0.1/24", "nonsense"])),
        ("expected an IPv4", lambda m: m.set_ips("fd00::5", None)),
        ("at least one address", lambda m: m.set_ips(None, None)),
        ("txqueuelen", lambda m: m.set_txqueuelen(-1)),
        ("MTU", lambda m: m.set_mtu(20)),
    ]

    async def main() -> None:
        async with TunDeviceManager(dev) as mgr:
            await mgr.set_ips("10.9.0.1", "fd00::1")
            await mgr.set_routes(["10.1.0.0/16"], ["fd01::/64"])
            before = kernel_state(ns)
            for message, call in bad_calls:
                with pytest.raises(ValueError, match=message):
                    await call(mgr)
                assert kernel_state(ns) == before, message

    in_ns(ns, main)


def test_failures_are_reported_per_family_and_route(topology: Topology) -> None:
    ns, dev = tun_ns(topology)
    ns.run("sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")

    async def main() -> None:
        async with TunDeviceManager(dev) as mgr:
            result = await mgr.set_ips("10.9.0.1", "fd00::1")
            assert result.stack == IpStack.V4
            assert any(e.op == "add address" and "fd00::1/128" in e.obj for e in result.errors)
            assert our_rules(ns, "-6") == []
            assert len(our_rules(ns, "-4")) == 1

            errors = await mgr.set_routes(["10.1.0.0/16", "10.2.0.0/16"], ["fd01::/64"])
            (err,) = errors
            assert err.op == "add route"
            assert err.obj == f"fd01::/64 table {TABLE}"
            assert err.errno != 0
            assert str(err).startswith(f"add route fd01::/64 table {TABLE}: [Errno {err.errno}] ")
            assert isinstance(err.__cause__, Exception)
            assert our_routes(ns, "-4") == {"10.1.0.0/16", "10.2.0.0/16"}

            with pytest.raises(NetdevError) as info:
                await mgr.set_ips(None, "fd00::1")
            assert info.value.errno == err.errno  # v6 refused on this link, same reason
            assert info.value.__cause__ is not None

    in_ns(ns, main)


def test_missing_device_is_enodev(topology: Topology) -> None:
    ns = topology.netns()

    async def main() -> None:
        mgr = TunDeviceManager(unique_name("nodev"))
        with pytest.raises(NetdevError) as info:
            await mgr.start()
        assert info.value.errno == errno.ENODEV
        assert info.value.op == "look up link"

    in_ns(ns, main)


def test_txqueuelen_and_mtu(topology: Topology) -> None:
    ns, dev = tun_ns(topology)

    async def main() -> None:
        async with TunDeviceManager(dev) as mgr:
            await mgr.set_txqueuelen(10000)
            await mgr.set_mtu(1350)
            await mgr.set_up()

    in_ns(ns, main)
    (link,) = ipj(ns, "link", "show", dev)
    assert link["txqlen"] == 10000
    assert link["mtu"] == 1350
    assert "UP" in link["flags"]


def test_concurrent_operations_do_not_overlap(topology: Topology) -> None:
    """Many operations at once share one netlink socket: no EBUSY, and the route diff state
    stays consistent because each operation runs whole under the lock."""
    ns, dev = tun_ns(topology)

    async def main() -> None:
        async with TunDeviceManager(dev) as mgr:
            await mgr.set_ips("10.9.0.1", "fd00::1")
            calls: list[Coroutine[Any, Any, object]] = [
                mgr.set_routes([f"10.{i}.0.0/16"], [f"fd0{i % 10}::/64"]) for i in range(20)
            ]
            calls += [mgr.set_ips("10.9.0.1", "fd00::1") for _ in range(5)]
            calls += [mgr.set_txqueuelen(1000 + i) for i in range(5)]
            for result in await asyncio.gather(*calls):
                if isinstance(result, tuple):  # set_routes: per-route errors
                    assert result == ()
                elif isinstance(result, AddressResult):
                    assert result.errors == ()
            # The last set_routes queued wins.
            assert our_routes(ns, "-4") == {"10.19.0.0/16"}
            assert our_routes(ns, "-6") == {"fd09::/64"}

    in_ns(ns, main)


def test_netns_argument_opens_the_socket_there(topology: Topology) -> None:
    ns, dev = tun_ns(topology)

    async def main() -> None:
        async with TunDeviceManager(dev, netns=ns.name) as mgr:
            await mgr.set_ips("10.9.0.1", None)
            await mgr.set_routes(["10.1.0.0/16"], [])
            assert our_routes(ns, "-4") == {"10.1.0.0/16"}

    asyncio.run(main())  # from the host namespace
    assert addresses(ns, dev) == {("10.9.0.1", 32)}
    assert our_routes(ns, "-4") == set()
    assert our_rules(ns, "-4") == []


def test_mark_socket_sets_so_mark() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        mark_socket(sock, 0x1234)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x1234
