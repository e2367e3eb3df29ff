"""Tests for wiretun.bench.ping: ICMP echo encoding and reply matching."""

from __future__ import annotations

import struct

from wiretun.bench.ping import PingResult, echo_request, parse_echo_reply
from wiretun.packet import internet_checksum


def ipv4_wrap(icmp: bytes, ihl_words: int = 5) -> bytes:
    header = bytearray(ihl_words * 4)
    header[0] = 0x40 | ihl_words
    struct.pack_into("!H", header, 2, len(header) + len(icmp))
    header[9] = 1
    return bytes(header) + icmp


def as_reply(request: bytes) -> bytes:
    reply = bytearray(request)
    reply[0] = 0
    reply[2:4] = b"\0\0"
    struct.pack_into("!H", reply, 2, internet_checksum(reply))
    return bytes(reply)


def test_echo_request_checksum_verifies() -> None:
    req = echo_request(0x1234, 7)
    assert req[0] == 8
    assert struct.unpack_from("!HH", req, 4) == (0x1234, 7)
    assert internet_checksum(req) == 0


def test_reply_matching() -> None:
    reply = as_reply(echo_request(0x1234, 7))
    assert parse_echo_reply(ipv4_wrap(reply), 0x1234) == 7
    assert parse_echo_reply(ipv4_wrap(reply, ihl_words=6), 0x1234) == 7
    assert parse_echo_reply(ipv4_wrap(reply), 0x4321) is None
    # Our own request (seen on a raw socket) is not a reply.
    assert parse_echo_reply(ipv4_wrap(echo_request(0x1234, 7)), 0x1234) is None


def test_garbage_is_ignored() -> None:
    for junk in (
        b"",
        b"\x45",
        bytes(19),
        b"\x60" + bytes(60),
        ipv4_wrap(b"\x00\x00"),
        b"\x4f" + bytes(30),
    ):
        assert parse_echo_reply(junk, 0) is None


def test_ping_result_median() -> None:
    assert PingResult(5, (0.3, 0.1, 0.2)).median_ms == 0.2
    assert PingResult(5, (0.3, 0.1, 0.2)).received == 3
    assert PingResult(5, ()).median_ms is None
