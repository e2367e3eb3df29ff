"""wiretun.netdev without the kernel: input checks, error messages, lifecycle misuse."""

from __future__ import annotations

import asyncio
import errno
import socket
from ipaddress import IPv4Network, IPv6Network, ip_interface, ip_network

import pytest
from pyroute2 import NetlinkError

from wiretun.netdev import (
    DEFAULT_FWMARK,
    DEFAULT_RULE_PRIORITY,
    DEFAULT_TABLE,
    IpStack,
    NetdevError,
    TunDeviceManager,
    mark_socket,
)
from wiretun.netdev.errors import errno_of
from wiretun.netdev.spec import parse_host, parse_interfaces, parse_networks


def test_error_names_operation_object_and_errno() -> None:
    err = NetdevError("add route", "10.1.0.0/16 table 22356", errno.EINVAL)
    assert str(err) == "add route 10.1.0.0/16 table 22356: [Errno 22] Invalid argument"
    assert (err.op, err.obj, err.errno) == ("add route", "10.1.0.0/16 table 22356", 22)


def test_errno_of_netlink_and_os_errors() -> None:
    assert errno_of(NetlinkError(errno.EEXIST)) == errno.EEXIST
    assert errno_of(OSError(errno.EPERM, "nope")) == errno.EPERM
    assert errno_of(OSError("no errno")) == errno.EIO


def test_defaults_are_usable_and_documented_values() -> None:
    assert DEFAULT_FWMARK == DEFAULT_TABLE == 0x5754
    assert 0 < DEFAULT_RULE_PRIORITY < 32766  # ahead of the main table's rule
    mgr = TunDeviceManager("wt0")
    assert (mgr.mtu, mgr.fwmark, mgr.table) == (1280, 0x5754, 0x5754)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "interface name"),
        ({"name": "x" * 16}, "interface name"),
        ({"name": "a/b"}, "invalid interface name"),
        ({"mtu": 67}, "MTU"),
        ({"mtu": 65536}, "MTU"),
        ({"fwmark": 0}, "fwmark"),
        ({"fwmark": 1 << 32}, "fwmark"),
        ({"table": 254}, "reserved"),
        ({"table": 0}, "routing table"),
        ({"rule_priority": 32766}, "rule priority"),
        ({"rule_priority": 0}, "rule priority"),
    ],
)
def test_constructor_rejects_bad_settings(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"name": "wt0", **kwargs}
    name = args.pop("name")
    with pytest.raises(ValueError, match=message):
        TunDeviceManager(name, **args)  # type: ignore[arg-type]


def test_parse_networks_accepts_strings_and_objects() -> None:
    got = parse_networks(["10.0.0.0/8", IPv4Network("0.0.0.0/0"), "10.0.0.0/8"], IPv4Network)
    assert got == {ip_network("10.0.0.0/8"), ip_network("0.0.0.0/0")}
    assert parse_networks(["fd00::/64"], IPv6Network) == {ip_network("fd00::/64")}
    assert parse_networks([], IPv4Network) == frozenset()


@pytest.mark.parametrize(
    ("items", "cls", "message"),
    [
        (["10.0.0.0/33"], IPv4Network, "invalid IPv4 route '10.0.0.0/33'"),
        (["not-a-cidr"], IPv4Network, "invalid IPv4 route"),
        (["10.0.0.1/8"], IPv4Network, "host bits set"),
        (["fd00::/64"], IPv4Network, "IPv4 route list got an IPv6 network: fd00::/64"),
        (["10.0.0.0/8"], IPv6Network, "IPv6 route list got an IPv4 network: 10.0.0.0/8"),
    ],
)
def test_parse_networks_rejects(items: list[str], cls: type[IPv4Network], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_networks(items, cls)


def test_parse_networks_rejects_a_lone_string_and_wrong_types() -> None:
    with pytest.raises(TypeError, match="not one string"):
        parse_networks("10.0.0.0/8", IPv4Network)
    with pytest.raises(TypeError, match="str or ip_network"):
        parse_networks([167772160], IPv4Network)  # type: ignore[list-item]


def test_parse_interfaces_keeps_prefixes_and_order() -> None:
    got = parse_interfaces(["10.0.0.1/24", "fd00::1/64", "10.0.0.1/24", "10.0.1.1"])
    assert got == (
        ip_interface("10.0.0.1/24"),
        ip_interface("fd00::1/64"),
        ip_interface("10.0.1.1/32"),
    )


@pytest.mark.parametrize("bad", ["0.0.0.0/0", "::/0", "224.0.0.1/32", "127.0.0.2/8", "10.0.0.1/40"])
def test_parse_interfaces_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="address"):
        parse_interfaces([bad])


def test_parse_host_checks_family() -> None:
    assert parse_host("10.0.0.1", 4) == ip_interface("10.0.0.1/32")
    assert parse_host("fd00::1", 6) == ip_interface("fd00::1/128")
    assert parse_host(None, 6) is None
    with pytest.raises(ValueError, match="expected an IPv4 address"):
        parse_host("fd00::1", 4)
    with pytest.raises(ValueError, match="invalid IPv6 address"):
        parse_host("fd00::1/64", 6)


def test_ip_stack_flags() -> None:
    assert IpStack.V4 | IpStack.V6 == IpStack.DUAL
    assert IpStack.V6 in IpStack.DUAL
    assert not IpStack.NONE


def test_bad_input_is_rejected_before_the_started_check() -> None:
    """Validation comes first: these fail on their input, not on the missing socket."""
    mgr = TunDeviceManager("wt0")

    async def main() -> None:
        with pytest.raises(ValueError, match="IPv4 route list got an IPv6"):
            await mgr.set_routes(["fd00::/64"], [])
        with pytest.raises(ValueError, match="below IPv6's minimum"):
            await TunDeviceManager("wt0", mtu=1000).set_ips(None, "fd00::1")
        with pytest.raises(ValueError, match="at least one address"):
            await mgr.set_addresses([])
        with pytest.raises(RuntimeError, match="not started"):
            await mgr.set_routes(["10.0.0.0/8"], [])
        with pytest.raises(RuntimeError, match="not started"):
            await mgr.set_ips("10.0.0.1", None)
        await mgr.close()  # never started: nothing to undo
        with pytest.raises(RuntimeError, match="closed"):
            await mgr.start()
        with pytest.raises(RuntimeError, match="closed"):
            await mgr.set_up()

    asyncio.run(main())


def test_mark_socket_errors_carry_errno_and_cause() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.close()
    with pytest.raises(NetdevError) as info:
        mark_socket(sock, 0x5754)
    assert info.value.errno == errno.EBADF
    assert info.value.op == "set SO_MARK"
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(ValueError, match="fwmark"):
        mark_socket(sock, 0)
