"""Pure functions over raw IP packets: versions, lengths, addresses, flow hash, checksums."""

from __future__ import annotations

import struct

PROTO_TCP = 6
PROTO_UDP = 17
IPV4_HEADER_MIN = 20
IPV6_HEADER_LEN = 40

_U16 = struct.Struct("!H")


def ip_version(packet: bytes | bytearray | memoryview) -> int:
    """The IP version nibble, or 0 for an empty buffer."""
    return packet[0] >> 4 if packet else 0


def ip_length(packet: bytes | bytearray | memoryview) -> int:
    """The packet length the IP header claims, or -1 if the header is truncated or unknown."""
    n = len(packet)
    if n >= IPV4_HEADER_MIN and packet[0] >> 4 == 4:
        return int(_U16.unpack_from(packet, 2)[0])
    if n >= IPV6_HEADER_LEN and packet[0] >> 4 == 6:
        return IPV6_HEADER_LEN + int(_U16.unpack_from(packet, 4)[0])
    return -1


def src_addr(packet: bytes | bytearray | memoryview) -> bytes:
    """Source address bytes (4 or 16); empty if the header is truncated or not IP."""
    v = ip_version(packet)
    if v == 4 and len(packet) >= IPV4_HEADER_MIN:
        return bytes(packet[12:16])
    if v == 6 and len(packet) >= IPV6_HEADER_LEN:
        return bytes(packet[8:24])
    return b""


def dst_addr(packet: bytes | bytearray | memoryview) -> bytes:
    """Destination address bytes (4 or 16); empty if the header is truncated or not IP."""
    v = ip_version(packet)
    if v == 4 and len(packet) >= IPV4_HEADER_MIN:
        return bytes(packet[16:20])
    if v == 6 and len(packet) >= IPV6_HEADER_LEN:
        return bytes(packet[24:40])
    return b""


def flow_key(packet: bytes | bytearray | memoryview) -> bytes:
    """Bytes naming the packet's flow: protocol, addresses and (for unfragmented TCP/UDP) ports.

    Non-IP or truncated packets share the empty key, which keeps them in one (ordered) queue.
    """
    n = len(packet)
    if n >= IPV4_HEADER_MIN and packet[0] >> 4 == 4:
        ihl = (packet[0] & 0x0F) * 4
        proto = packet[9]
        # Fragments after the first carry no ports; all fragments hash on addresses only.
        fragmented = (packet[6] & 0x3F) or packet[7]
        if proto in (PROTO_TCP, PROTO_UDP) and not fragmented and n >= ihl + 4:
            return bytes(packet[9:10]) + bytes(packet[12:20]) + bytes(packet[ihl : ihl + 4])
        return bytes(packet[9:10]) + bytes(packet[12:20])
    if n >= IPV6_HEADER_LEN and packet[0] >> 4 == 6:
        proto = packet[6]
        if proto in (PROTO_TCP, PROTO_UDP) and n >= IPV6_HEADER_LEN + 4:
            return bytes(packet[6:7]) + bytes(packet[8:44])
        return bytes(packet[6:7]) + bytes(packet[8:40])
    return b""


def flow_hash(packet: bytes | bytearray | memoryview) -> int:
    """A hash of the 5-tuple, stable within one process: equal flows give equal hashes."""
    return hash(flow_key(packet))


def ones_complement_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The 16-bit one's-complement sum of `data` (big-endian words, odd tail zero-padded).

    Whole-buffer integer arithmetic: 2**(16k) == 1 (mod 0xffff), so the sum of the words
    modulo 0xffff is the integer's value modulo 0xffff. A nonzero sum never folds to 0.
    """
    if len(data) & 1:
        data = bytes(data) + b"\x00"
    total = int.from_bytes(data, "big") % 0xFFFF + initial
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    if total == 0 and (initial or any(data)):
        return 0xFFFF
    return total


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 checksum: the complement of the one's-complement sum."""
    return ~ones_complement_sum(data, initial) & 0xFFFF


def pseudo_header_sum(packet: bytes | bytearray | memoryview, proto: int, l4_length: int) -> int:
    """One's-complement sum of the IPv4/IPv6 pseudo-header for an L4 checksum."""
    if packet[0] >> 4 == 4:
        addrs = bytes(packet[12:20])
    else:
        addrs = bytes(packet[8:40])
    return ones_complement_sum(addrs + struct.pack("!HH", proto, l4_length))
