"""wiretun.tun.base.check_packets: the one check of what is sent to a TUN (Tun, InlineTun):
exactly the IPv4/IPv6 packets whose header length is their length pass, after the
virtio_net_hdr offset of an offload queue; its fast path (bytes) and its slow path (other
bytes-like objects, and the explanation) agree."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wiretun.packet import ip_length
from wiretun.tun import InvalidPacket
from wiretun.tun.base import MAX_PACKET, check_packets


def _fix(p: bytes) -> bytes:
    # Half of them made well-formed, so both outcomes are exercised.
    if len(p) >= 40 and p[0] & 1:
        v6 = bool(p[0] & 2)
        head = bytes([0x60 if v6 else 0x45]) + p[1:]
        n = len(head) - 40 if v6 else len(head)
        at = 4 if v6 else 2
        return head[:at] + n.to_bytes(2, "big") + head[at + 2 :]
    return p


def _passes(packets: list[object], offset: int = 0) -> bool:
    try:
        check_packets(packets, offset)
    except InvalidPacket:
        return False
    return True


@given(st.lists(st.binary(max_size=64).map(_fix), max_size=8), st.sampled_from([0, 10]))
def test_exactly_the_packets_whose_ip_length_is_right_pass(packets: list[bytes], o: int) -> None:
    framed = [bytes(o) + p for p in packets]
    want = all(ip_length(p) == len(p) for p in packets)
    assert _passes(list(framed), o) is want
    # Any other bytes-like form takes the slow path to the same answer.
    assert _passes([bytearray(p) for p in framed], o) is want
    assert _passes([memoryview(p) for p in framed], o) is want


def test_the_error_says_what_is_wrong() -> None:
    v4 = bytes([0x45, 0, 0, 28]) + bytes(24)
    with pytest.raises(InvalidPacket, match="says its length is 28"):
        check_packets([v4 + b"x"])
    with pytest.raises(InvalidPacket, match="over the IP maximum"):
        check_packets([bytes([0x45]) + bytes(MAX_PACKET)])
    with pytest.raises(InvalidPacket, match="not str"):
        check_packets(["a"])
    with pytest.raises(ValueError, match="not IPv4 or IPv6"):  # InvalidPacket is one
        check_packets([v4, b""])
    check_packets([v4, bytes(10) + v4][:1])
    check_packets([bytes(10) + v4], offset=10)
