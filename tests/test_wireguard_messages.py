"""Message codecs: exact sizes and offsets, round trips, and garbage raising only MessageError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wiretun.wireguard.errors import MessageError
from wiretun.wireguard.messages import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    MSG_COOKIE_REPLY,
    MSG_INITIATION,
    MSG_RESPONSE,
    MSG_TRANSPORT,
    RESPONSE_SIZE,
    TRANSPORT_HEADER_SIZE,
    TRANSPORT_MIN_SIZE,
    CookieReply,
    Initiation,
    Response,
    message_type,
    pack_transport_header,
    unpack_transport_header,
)

u32 = st.integers(min_value=0, max_value=0xFFFFFFFF)


def blob(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


initiations = st.builds(Initiation, u32, blob(32), blob(48), blob(28), blob(16), blob(16))
responses = st.builds(Response, u32, u32, blob(32), blob(16), blob(16), blob(16))
cookie_replies = st.builds(CookieReply, u32, blob(24), blob(32))


def test_sizes_match_the_protocol() -> None:
    assert (INITIATION_SIZE, RESPONSE_SIZE, COOKIE_REPLY_SIZE) == (148, 92, 64)
    assert (TRANSPORT_HEADER_SIZE, TRANSPORT_MIN_SIZE) == (16, 32)
    assert (MSG_INITIATION, MSG_RESPONSE, MSG_COOKIE_REPLY, MSG_TRANSPORT) == (1, 2, 3, 4)


def test_initiation_layout() -> None:
    msg = Initiation(
        0x11223344, b"E" * 32, b"S" * 48, b"T" * 28, mac1=b"1" * 16, mac2=b"2" * 16
    ).pack()
    assert len(msg) == 148
    assert msg[:4] == b"\x01\x00\x00\x00"
    assert msg[4:8] == bytes([0x44, 0x33, 0x22, 0x11])  # little-endian
    assert msg[8:40] == b"E" * 32
    assert msg[40:88] == b"S" * 48
    assert msg[88:116] == b"T" * 28
    assert msg[116:132] == b"1" * 16
    assert msg[132:148] == b"2" * 16
    assert Initiation(1, bytes(32), bytes(48), bytes(28)).mac1 == bytes(16)  # macs default zero


def test_response_and_cookie_reply_layout() -> None:
    resp = Response(7, 9, b"E" * 32, b"N" * 16, b"1" * 16, b"2" * 16).pack()
    assert len(resp) == 92
    assert resp[:12] == bytes([2, 0, 0, 0, 7, 0, 0, 0, 9, 0, 0, 0])
    assert resp[12:44] == b"E" * 32
    assert resp[44:60] == b"N" * 16
    assert resp[60:92] == b"1" * 16 + b"2" * 16
    reply = CookieReply(5, b"n" * 24, b"c" * 32).pack()
    assert len(reply) == 64
    assert reply[:8] == bytes([3, 0, 0, 0, 5, 0, 0, 0])
    assert reply[8:32] == b"n" * 24
    assert reply[32:] == b"c" * 32


@given(initiations)
def test_initiation_round_trip(msg: Initiation) -> None:
    packed = msg.pack()
    assert len(packed) == INITIATION_SIZE
    assert message_type(packed) == MSG_INITIATION
    assert Initiation.unpack(packed) == msg


@given(responses)
def test_response_round_trip(msg: Response) -> None:
    packed = msg.pack()
    assert message_type(packed) == MSG_RESPONSE
    assert Response.unpack(packed) == msg


@given(cookie_replies)
def test_cookie_reply_round_trip(msg: CookieReply) -> None:
    packed = msg.pack()
    assert message_type(packed) == MSG_COOKIE_REPLY
    assert CookieReply.unpack(packed) == msg


@given(u32, st.integers(min_value=0, max_value=(1 << 64) - 1), st.binary(max_size=64))
def test_transport_header_round_trip(receiver: int, counter: int, body: bytes) -> None:
    header = pack_transport_header(receiver, counter)
    assert len(header) == TRANSPORT_HEADER_SIZE
    assert header[:4] == b"\x04\x00\x00\x00"
    assert header[8:] == struct.pack("<Q", counter)
    msg = header + bytes(16) + body
    assert message_type(msg) == MSG_TRANSPORT
    assert unpack_transport_header(msg) == (receiver, counter)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", 0),
        (b"\x01\x00\x00", 0),
        (b"\x00\x00\x00\x00", 0),
        (b"\x05\x00\x00\x00", 0),
        (b"\x01\x00\x00\x01", 0),  # reserved bytes must be zero
        (b"\x01\x01\x00\x00", 0),
        (b"\xff\xff\xff\xff", 0),
        (b"\x01\x00\x00\x00", 1),
        (b"\x04\x00\x00\x00trailing", 4),
    ],
)
def test_message_type(data: bytes, kind: int) -> None:
    assert message_type(data) == kind


def test_unpack_rejects_wrong_size_and_type() -> None:
    good = Initiation(1, bytes(32), bytes(48), bytes(28)).pack()
    for bad in [good[:-1], good + b"\x00", b"\x02" + good[1:], good[:3] + b"\x01" + good[4:]]:
        with pytest.raises(MessageError):
            Initiation.unpack(bad)
    with pytest.raises(MessageError):
        Response.unpack(good[:92])  # right size for a response, wrong type
    with pytest.raises(MessageError):
        unpack_transport_header(pack_transport_header(1, 2) + bytes(15))  # 31 bytes
    with pytest.raises(MessageError):
        unpack_transport_header(b"\x01" + bytes(40))


def test_constructors_reject_bad_fields() -> None:
    with pytest.raises(MessageError):
        Initiation(1, bytes(31), bytes(48), bytes(28))
    with pytest.raises(MessageError):
        Initiation(1 << 32, bytes(32), bytes(48), bytes(28))
    with pytest.raises(MessageError):
        Response(-1, 0, bytes(32), bytes(16))
    with pytest.raises(MessageError):
        CookieReply(0, bytes(24), bytes(33))
    with pytest.raises(MessageError):
        pack_transport_header(0, 1 << 64)


# Plain noise, plus noise behind a plausible type header so the size checks get exercised.
garbage = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda kind, rest: bytes([kind, 0, 0, 0]) + rest, st.integers(0, 6), st.binary(max_size=160)
    ),
)


@given(garbage)
def test_unpacking_garbage_raises_only_message_error(data: bytes) -> None:
    decoded = 0
    for codec in (Initiation, Response, CookieReply):
        try:
            codec.unpack(data)
            decoded += 1
        except MessageError:
            pass
    try:
        unpack_transport_header(data)
        decoded += 1
    except MessageError:
        pass
    # Each datagram's type header selects at most one codec.
    assert decoded <= 1
    assert decoded == 0 or message_type(data) != 0


@given(st.sampled_from([INITIATION_SIZE, RESPONSE_SIZE, COOKIE_REPLY_SIZE]), st.data())
def test_well_framed_garbage_decodes(size: int, data: st.DataObject) -> None:
    kind = {INITIATION_SIZE: 1, RESPONSE_SIZE: 2, COOKIE_REPLY_SIZE: 3}[size]
    body = data.draw(blob(size - 4))
    raw = bytes([kind, 0, 0, 0]) + body
    decoded: Initiation | Response | CookieReply
    if kind == MSG_INITIATION:
        decoded = Initiation.unpack(raw)
    elif kind == MSG_RESPONSE:
        decoded = Response.unpack(raw)
    else:
        decoded = CookieReply.unpack(raw)
    assert decoded.pack() == raw
