"""Routes in bulk against a real kernel (a namespace per test): every route of a batch gets
its own errno, deletes touch only our device's routes, PolicyRouting keeps what went in."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from wiretun.lab.netns import NetNS, Topology, unique_name
from wiretun.netdev.bulk import CHUNK, RouteSocket
from wiretun.netdev.errors import NetdevError
from wiretun.netdev.policy import MAIN_TABLE, PolicyRouting
from wiretun.netdev.spec import Network

pytestmark = pytest.mark.root

T = TypeVar("T")


def veth_ns(topology: Topology) -> tuple[NetNS, str, str]:
    ns = topology.netns()
    ours, other = unique_name("wtb"), unique_name("wtb")
    ns.run("ip", "link", "add", ours, "type", "veth", "peer", "name", other)
    for dev in (ours, other):
        ns.run("ip", "link", "set", dev, "up")
    return ns, ours, other


def in_ns(ns: NetNS, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with ns.enter():
        return asyncio.run(main())


def routes_of(ns: NetNS, dev: str, family: str = "-4", table: str = "main") -> set[str]:
    out = ns.run("ip", "-j", family, "route", "show", "dev", dev, "table", table).strip()
    return {r["dst"] for r in (json.loads(out) if out else [])}


def ifindex(ns: NetNS, dev: str) -> int:
    return int(json.loads(ns.run("ip", "-j", "link", "show", dev))[0]["ifindex"])


def v4(n: int) -> list[Network]:
    return [ipaddress.ip_network(f"10.{100 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32")
            for i in range(1, n + 1)]  # fmt: skip


def test_each_route_of_a_batch_gets_its_own_errno(topology: Topology) -> None:
    ns, dev, _ = veth_ns(topology)
    index = ifindex(ns, dev)
    nets = v4(3 * CHUNK + 5)  # several sends
    six = [ipaddress.ip_network(f"fd00:b::{i:x}/128") for i in range(1, 40)]
    added = [(net, MAIN_TABLE) for net in nets] + [(net, 51820) for net in six]

    async def main() -> tuple[list[int], list[int], list[int], list[int]]:
        sock = RouteSocket()
        try:
            first = await sock.apply("add", added, index)
            again = await sock.apply("add", added[:3], index)
            gone = await sock.apply("del", added, index)
            missing = await sock.apply("del", added[:2], index)
        finally:
            sock.close()
        return first, again, gone, missing

    first, again, gone, missing = in_ns(ns, main)
    assert first == [0] * len(added)
    assert again == [errno.EEXIST] * 3
    assert gone == [0] * len(added)
    assert missing == [errno.ESRCH] * 2
    assert routes_of(ns, dev) == set()
    assert routes_of(ns, dev, "-6", "51820") == set()


def test_routes_are_in_the_kernel_until_deleted(topology: Topology) -> None:
    ns, dev, _ = veth_ns(topology)
    index = ifindex(ns, dev)
    nets = v4(500)
    sock: list[RouteSocket] = []

    async def add() -> list[int]:
        sock.append(RouteSocket())
        return await sock[0].apply("add", [(n, MAIN_TABLE) for n in nets], index)

    async def delete() -> list[int]:
        try:
            return await sock[0].apply("del", [(n, MAIN_TABLE) for n in nets], index)
        finally:
            sock[0].close()

    assert in_ns(ns, add) == [0] * len(nets)
    assert routes_of(ns, dev) == {str(n.network_address) for n in nets}
    assert in_ns(ns, delete) == [0] * len(nets)
    assert routes_of(ns, dev) == set()


def test_a_delete_leaves_another_devices_route_to_the_prefix(topology: Topology) -> None:
    ns, dev, other = veth_ns(topology)
    ns.run("ip", "route", "add", "10.100.0.1/32", "dev", other, "metric", "100")
    index = ifindex(ns, dev)
    net = ipaddress.ip_network("10.100.0.1/32")

    async def main() -> tuple[list[int], list[int], list[int]]:
        sock = RouteSocket()
        try:
            add = await sock.apply("add", [(net, MAIN_TABLE)], index)
            delete = await sock.apply("del", [(net, MAIN_TABLE)], index)
            again = await sock.apply("del", [(net, MAIN_TABLE)], index)
        finally:
            sock.close()
        return add, delete, again

    assert in_ns(ns, main) == ([0], [0], [errno.ESRCH])
    assert routes_of(ns, other) == {"10.100.0.1"}
    assert routes_of(ns, dev) == set()


def test_policy_routing_keeps_what_went_in_and_close_removes_it(topology: Topology) -> None:
    ns, dev, other = veth_ns(topology)
    ns.run("ip", "route", "add", "10.100.0.7/32", "dev", other)  # same metric: ours conflicts
    nets = v4(300)

    async def main() -> tuple[str, set[str]]:
        policy = PolicyRouting(dev, on_rules=lambda rules: None)
        await policy.start()
        try:
            with pytest.raises(NetdevError) as failed:
                await policy.add_routes([(n, MAIN_TABLE) for n in nets])
            during = routes_of(ns, dev)
        finally:
            await policy.close()
        return str(failed.value), during

    message, during = in_ns(ns, main)
    assert message.startswith(f"add route 10.100.0.7/32 dev {dev} table 254: [Errno 17]")
    assert during == {str(n.network_address) for n in nets} - {"10.100.0.7"}
    assert routes_of(ns, dev) == set()
    assert routes_of(ns, other) == {"10.100.0.7"}
