"""Tests for wiretun.packet."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from wiretun import packet


def reference_sum(data: bytes) -> int:
    """Word-by-word one's-complement sum: the independent model."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


@given(st.binary(max_size=300))
def test_checksum_matches_word_loop(data: bytes) -> None:
    assert packet.internet_checksum(data) == ~reference_sum(data) & 0xFFFF


def test_checksum_known_ipv4_header() -> None:
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert packet.internet_checksum(header) == 0xB861


def udp4(src: str, dst: str, sport: int, dport: int) -> bytes:
    s = bytes(int(x) for x in src.split("."))
    d = bytes(int(x) for x in dst.split("."))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, s, d)
    return ip + struct.pack("!HHHH", sport, dport, 8, 0)


def test_flow_hash_separates_ports_and_groups_flows() -> None:
    a = udp4("10.0.0.1", "10.0.0.2", 1000, 2000)
    b = udp4("10.0.0.1", "10.0.0.2", 1001, 2000)
    assert packet.flow_key(a) != packet.flow_key(b)
    assert packet.flow_hash(a) == packet.flow_hash(udp4("10.0.0.1", "10.0.0.2", 1000, 2000))


def test_lengths_and_addresses() -> None:
    p = udp4("10.0.0.1", "10.0.0.2", 1, 2)
    assert packet.ip_length(p) == 28
    assert packet.src_addr(p) == bytes([10, 0, 0, 1])
    assert packet.dst_addr(p) == bytes([10, 0, 0, 2])
    assert packet.ip_length(b"\x45") == -1
    assert packet.flow_key(b"") == b""
