"""WireGuard message codecs: unpack of each type and message_type on arbitrary bytes."""

from __future__ import annotations

from fuzz.runner import Harness
from wiretun.wireguard import messages as m
from wiretun.wireguard.errors import MessageError

_SIZES = {
    m.MSG_INITIATION: m.INITIATION_SIZE,
    m.MSG_RESPONSE: m.RESPONSE_SIZE,
    m.MSG_COOKIE_REPLY: m.COOKIE_REPLY_SIZE,
}


def valid_messages() -> list[bytes]:
    return [
        m.Initiation(7, bytes(range(32)), bytes(48), bytes(28), b"\x01" * 16, b"\x02" * 16).pack(),
        m.Response(7, 9, bytes(range(32)), bytes(16), b"\x03" * 16).pack(),
        m.CookieReply(9, bytes(24), bytes(32)).pack(),
        m.pack_transport_header(9, 12345) + bytes(16),
        m.pack_transport_header(0xFFFFFFFF, (1 << 64) - 1) + bytes(100),
    ]


class MessagesHarness(Harness):
    name = "wg_messages"

    def seeds(self) -> list[bytes]:
        return valid_messages()

    def check(self, data: bytes) -> None:
        kind = m.message_type(data)
        word = int.from_bytes(data[:4], "little") if len(data) >= 4 else -1
        assert kind == (word if 1 <= word <= 4 else 0)
        codecs: list[type[m.Initiation] | type[m.Response] | type[m.CookieReply]] = [
            m.Initiation,
            m.Response,
            m.CookieReply,
        ]
        for number, codec in enumerate(codecs, start=1):
            try:
                msg = codec.unpack(data)
            except MessageError:
                assert kind != number or len(data) != _SIZES[number]
                continue
            assert kind == number and len(data) == _SIZES[number]
            assert msg.pack() == data  # the codec loses nothing
        try:
            receiver, counter = m.unpack_transport_header(data)
        except MessageError:
            assert kind != m.MSG_TRANSPORT or len(data) < m.TRANSPORT_MIN_SIZE
            return
        assert kind == m.MSG_TRANSPORT
        assert m.pack_transport_header(receiver, counter) == data[: m.TRANSPORT_HEADER_SIZE]
