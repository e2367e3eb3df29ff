"""wiretun.packet on arbitrary bytes: no exception, and answers that agree with slow references."""

from __future__ import annotations

import struct

from fuzz.runner import Harness
from wiretun import packet
from wiretun.testing.wgpair import ipv4_packet, ipv6_packet


def reference_sum(data: bytes, initial: int) -> int:
    """RFC 1071 done the slow way: add big-endian words, fold the carries."""
    if len(data) & 1:
        data += b"\x00"
    total = initial + sum(int(w) for (w,) in struct.iter_unpack("!H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


class PacketHarness(Harness):
    name = "packet"

    def seeds(self) -> list[bytes]:
        v6a, v6b = bytes(15) + b"\x01", bytes(15) + b"\x02"
        return [
            ipv4_packet("10.0.0.1", "10.0.0.2", b"\x12\x34\x00\x35" + bytes(4), proto=17),
            ipv4_packet("10.0.0.1", "10.0.0.2", bytes(20), proto=6),
            ipv6_packet(v6a, v6b, b"\x12\x34\x00\x35" + bytes(4), proto=17),
            ipv6_packet(v6a, v6b, bytes(20), proto=6),
        ]

    def check(self, data: bytes) -> None:
        for buf in (data, bytearray(data), memoryview(data)):
            version = packet.ip_version(buf)
            assert 0 <= version <= 15
            length = packet.ip_length(buf)
            assert length == -1 or 0 <= length <= 0xFFFF + 40
            src, dst = packet.src_addr(buf), packet.dst_addr(buf)
            assert len(src) in (0, 4, 16) and len(dst) == len(src)
            key = packet.flow_key(buf)
            assert packet.flow_hash(buf) == hash(key)
        initial = data[0] << 8 | data[1] if len(data) >= 2 else 0
        total = packet.ones_complement_sum(data, initial)
        assert total == reference_sum(data, initial), (total, reference_sum(data, initial))
        csum = packet.internet_checksum(data)
        assert csum == ~reference_sum(data, 0) & 0xFFFF
        if len(data) % 2 == 0:
            # A buffer with its own checksum appended sums to all ones.
            assert packet.ones_complement_sum(data + csum.to_bytes(2, "big")) in (0xFFFF, 0)
        if packet.ip_version(data) in (4, 6) and len(data) >= 40:
            assert 0 <= packet.pseudo_header_sum(data, packet.PROTO_UDP, len(data)) <= 0xFFFF
