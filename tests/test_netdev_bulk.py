"""Route requests built by struct read back as pyroute2 reads them, and acks parsed from bytes."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from wiretun.netdev.bulk import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    RTM_DELROUTE,
    RTM_NEWROUTE,
    encode_route,
    parse_acks,
)


def decode(data: bytes) -> rtmsg:
    msg = rtmsg(data)
    msg.decode()
    return msg


@pytest.mark.parametrize(
    ("net", "table"),
    [
        ("10.100.0.3/32", 254),
        ("0.0.0.0/0", 51820),
        ("fd00:9::/64", 254),
        ("::/0", 0xFFFFFFFF),
    ],
)
def test_add_reads_back_as_the_route_asked_for(net: str, table: int) -> None:
    network = ipaddress.ip_network(net)
    msg = decode(encode_route("add", network, table, 7, 42))
    header = msg["header"]
    assert header["type"] == RTM_NEWROUTE
    assert header["flags"] == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    assert header["sequence_number"] == 42
    assert header["length"] == len(encode_route("add", network, table, 7, 42))
    assert msg["family"] == (socket.AF_INET if network.version == 4 else socket.AF_INET6)
    assert msg["dst_len"] == network.prefixlen
    assert msg.get("dst") == str(network.network_address)
    assert msg.get("oif") == 7
    assert msg.get("table") == table  # RTA_TABLE: tables past 255 too
    assert (msg["type"], msg["scope"], msg["proto"]) == (1, 0, 4)  # unicast, universe, static


def test_delete_matches_any_route_of_the_device_to_the_prefix() -> None:
    msg = decode(encode_route("del", ipaddress.ip_network("10.1.0.0/16"), 51820, 9, 1))
    assert msg["header"]["type"] == RTM_DELROUTE
    assert msg["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK
    assert (msg["type"], msg["scope"], msg["proto"]) == (0, 0, 0)
    assert (msg.get("dst"), msg["dst_len"], msg.get("oif"), msg.get("table")) == (
        "10.1.0.0", 16, 9, 51820,
    )  # fmt: skip


def ack(seq: int, code: int, kind: int = NLMSG_ERROR) -> bytes:
    body = struct.pack("=i", -code) + struct.pack("=IHHII", 16, RTM_NEWROUTE, 0, seq, 0)
    return struct.pack("=IHHII", 16 + len(body), kind, 0, seq, 1234) + body


def test_acks_give_each_sequence_its_errno() -> None:
    data = ack(1, 0) + ack(2, errno.EEXIST) + ack(3, 0, kind=3) + ack(4, errno.ENODEV)
    assert parse_acks(data) == [(1, 0), (2, errno.EEXIST), (4, errno.ENODEV)]


def test_a_truncated_or_zero_length_message_ends_parsing() -> None:
    assert parse_acks(ack(1, 0)[:20]) == []
    assert parse_acks(struct.pack("=IHHII", 0, NLMSG_ERROR, 0, 1, 0) + ack(2, 0)) == []


@given(st.binary(max_size=512))
def test_any_bytes_parse_without_error(data: bytes) -> None:
    for seq, code in parse_acks(data):
        assert 0 <= seq <= 0xFFFFFFFF
        assert isinstance(code, int)
