"""Device.receive_datagrams on arbitrary and mutated datagrams: nothing raises, nothing
invalid is delivered, and every invalid datagram is counted as exactly one drop, under the
reason the bytes determine (where they determine one).

Input format: byte 0 picks the scene, the rest is the datagram.
  bit 0: receiving device (0: b, the responder; 1: a, the initiator)
  bit 1: force the receiver under load (mac2 / cookie / rate-limit path)
  bits 2-3: source endpoint (the real peer, another IPv4, an IPv6, an unparsable host)
  bit 4: the rest is an inner packet, sealed with the sender's live session key: an
         authenticated peer sending garbage, which checks the inner-packet parser exactly
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from fuzz.runner import Harness
from wiretun.datapath import Backend
from wiretun.testing.wgpair import WgPair, ipv4_packet, ipv6_packet, make_pair
from wiretun.wireguard import messages as m
from wiretun.wireguard.cookie import CookieChecker, CookieGenerator
from wiretun.wireguard.device import Device
from wiretun.wireguard.events import Endpoint

PAIR_SEED = 7
REBUILD_EVERY = 1000  # inputs; keeps keypairs far from their 180 s expiry
STEP = 0.01  # seconds of fake time per input

_SOURCES: tuple[Endpoint, ...] = (
    ("", 0),  # placeholder: the receiver's real peer address
    ("198.51.100.9", 4000),
    ("2001:db8::9", 51820),
    ("not-an-ip", 1),
)
_ANY_HANDSHAKE = {
    "handshake_failed",
    "unknown_peer",
    "handshake_replay",
    "handshake_flood",
    "unknown_index",
}
_UNDER_LOAD = {"cookie_sent", "rate_limited", "bad_endpoint"}


@dataclass
class Scene:
    """A pair that completed a cookie-assisted handshake, and what crossed the wire."""

    pair: WgPair
    captured: list[tuple[Endpoint, Endpoint, bytes]]  # (from, to, datagram)
    index_of: dict[int, int]  # id(device) -> its session's receiver index


def build_scene(datapath: Backend | None = None) -> Scene:
    """Deterministic: the seeded rng and fake clock make every build send the same bytes."""
    pair = make_pair(PAIR_SEED, datapath=datapath)
    pair.b.under_load = True  # first initiation gets a cookie reply, the retry carries mac2
    pair.a_to_b(b"one")
    pair.net.roundtrip()
    pair.net.tick(6)
    pair.b.under_load = False
    pair.a_to_b(b"two")
    pair.b_to_a(b"three")
    pair.net.roundtrip()
    pair.a.set_persistent_keepalive(pair.b.public_key, 25, pair.clock.now)  # a keepalive
    pair.net.roundtrip()
    captured = list(pair.net.sent)
    response = next(d for _, _, d in captured if m.message_type(d) == m.MSG_RESPONSE)
    parsed = m.Response.unpack(response)
    index_of = {id(pair.b): parsed.sender, id(pair.a): parsed.receiver}
    return Scene(pair, captured, index_of)


def expected_reasons(data: bytes, receiver: Device, index: int, load: bool) -> set[str] | None:
    """The drop reasons the bytes allow, or None when any reason is plausible."""
    n = len(data)
    if n < 4:
        return {"bad_size"}
    word = int.from_bytes(data[:4], "little")
    if n >= m.TRANSPORT_MIN_SIZE and data[0] == m.MSG_TRANSPORT:
        if word != m.MSG_TRANSPORT:
            return {"bad_type"}
        if int.from_bytes(data[4:8], "little") != index:
            return {"unknown_index"}
        return {"expired", "replay", "decrypt"}
    sizes = {
        m.MSG_INITIATION: m.INITIATION_SIZE,
        m.MSG_RESPONSE: m.RESPONSE_SIZE,
        m.MSG_COOKIE_REPLY: m.COOKIE_REPLY_SIZE,
        m.MSG_TRANSPORT: m.TRANSPORT_MIN_SIZE,
    }
    if word not in sizes:
        return {"bad_type"}
    if n != sizes[word]:
        return {"bad_size"}
    if word == m.MSG_COOKIE_REPLY:
        if int.from_bytes(data[4:8], "little") != index:
            return {"unknown_index"}
        return {"cookie_invalid"}
    if not CookieChecker(receiver.public_key).check_mac1(data):
        return {"mac1"}
    return _ANY_HANDSHAKE | _UNDER_LOAD if load else _ANY_HANDSHAKE


class DeviceHarness(Harness):
    name = "wg_device"

    def __init__(self) -> None:
        self._scene = build_scene()
        self._count = 0
        self.invalid = 0  # datagrams that had to be dropped (a test reads these)
        self.reasons: Counter[str] = Counter()  # drops of invalid datagrams, by reason

    def reset(self) -> None:
        self._scene = build_scene()
        self._count = 0

    def seeds(self) -> list[bytes]:
        scene = self._scene
        b_addr = scene.pair.b_addr
        out = []
        for _src, dst, datagram in scene.captured:
            control = 0 if dst == b_addr else 1
            out.append(bytes([control]) + datagram)
            out.append(bytes([control | 2]) + datagram)
            if m.message_type(datagram) == m.MSG_COOKIE_REPLY:
                # Aimed at a's live session so the reply reaches the cookie decryption.
                index = scene.index_of[id(scene.pair.a)].to_bytes(4, "little")
                out.append(b"\x01" + datagram[:4] + index + datagram[8:])
        # Inner packets from the authenticated peer: valid, padded, and wrong in each way.
        a_to_b = ipv4_packet("10.0.0.1", "10.0.0.2", b"inner")
        out += [
            b"\x10" + a_to_b,
            b"\x10" + a_to_b + bytes(11),
            b"\x11" + ipv4_packet("10.0.0.2", "10.0.0.1", b"back"),
            b"\x10" + ipv4_packet("10.0.0.9", "10.0.0.2", b"spoofed"),
            b"\x10" + ipv6_packet(bytes(16), bytes(16), b"v6"),
            b"\x10",
        ]
        return out

    def generate(self, rng: random.Random, pool: Sequence[bytes]) -> bytes:
        if rng.random() < 0.1:
            # Random bodies behind a plausible header reach past the size and type checks.
            kind = rng.randrange(1, 5)
            size = rng.choice((148, 92, 64, 32, 48, rng.randrange(200)))
            header = kind.to_bytes(4, "little") + rng.randbytes(4)
            return bytes([rng.randrange(16)]) + (header + rng.randbytes(size))[:size]
        data = super().generate(rng, pool)
        if data and rng.random() < 0.2:
            data = bytes([rng.randrange(16)]) + data[1:]  # same datagram, another scene
        if len(data) in (1 + m.INITIATION_SIZE, 1 + m.RESPONSE_SIZE) and rng.random() < 0.5:
            data = data[:1] + self._remac(data[0], data[1:])
        return data

    def _remac(self, control: int, datagram: bytes) -> bytes:
        """A valid mac1 for the receiver, so the mutation reaches the Noise layer."""
        pair = self._scene.pair
        receiver = pair.a if control & 1 else pair.b
        return CookieGenerator(receiver.public_key).add_macs(datagram, pair.clock.now)

    def check(self, data: bytes) -> None:
        if not data:
            return
        self._count += 1
        if self._count > REBUILD_EVERY:
            self.reset()
            self._count = 1
        scene = self._scene
        pair = scene.pair
        control, datagram = data[0], data[1:]
        if control & 1:
            receiver, own_addr, peer_addr = pair.a, pair.a_addr, pair.b_addr
        else:
            receiver, own_addr, peer_addr = pair.b, pair.b_addr, pair.a_addr
        load = bool(control & 2)
        src = _SOURCES[(control >> 2) & 3]
        if not src[0]:
            src = peer_addr
        pair.clock.advance(STEP)
        if control & 0x10:
            self._check_sealed(receiver, peer_addr, datagram)
            return
        before = receiver.stats().drops
        receiver.under_load = load
        try:
            delivered = receiver.receive_datagrams([(datagram, src)], pair.clock.now)
            receiver.process_handshakes(pair.clock.now)  # what the datagram queued
        finally:
            receiver.under_load = False
            receiver.datagrams_to_send()  # cookie replies, responses: not needed here
            while receiver.next_event() is not None:
                pass
        after = receiver.stats().drops
        grew = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        grew = {k: v for k, v in grew.items() if v}
        total = sum(grew.values())
        known = any(d == datagram and dst == own_addr for _s, dst, d in scene.captured)
        if known:
            assert total <= 1, f"one datagram, {total} drops: {grew}"
            return
        # Anything not captured from the real exchange must be refused, and counted once.
        self.invalid += 1
        self.reasons.update(grew)
        assert not delivered, f"delivered {delivered!r} from an invalid datagram"
        assert total == 1, f"invalid datagram counted as {grew or 'no drop'}"
        reasons = expected_reasons(datagram, receiver, scene.index_of[id(receiver)], load)
        if reasons is not None:
            (reason,) = grew
            assert reason in reasons, f"dropped as {reason}, expected one of {sorted(reasons)}"

    def _check_sealed(self, receiver: Device, peer_addr: Endpoint, inner: bytes) -> None:
        pair = self._scene.pair
        sender = pair.b if receiver is pair.a else pair.a
        keypair = sender.peer(receiver.public_key).current
        assert keypair is not None, "the scene's session is gone"
        datagram = keypair.seal(inner)
        before = receiver.stats().drops
        delivered = receiver.receive_datagrams([(datagram, peer_addr)], pair.clock.now)
        after = receiver.stats().drops
        grew = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
        want, reason = expected_inner(
            inner, b"\x0a\x00\x00" + (b"\x02" if sender is pair.b else b"\x01")
        )
        assert delivered == want, f"delivered {delivered!r}, expected {want!r}"
        assert grew == ({reason: 1} if reason else {}), f"drops {grew}, expected {reason}"


def expected_inner(inner: bytes, allowed_source: bytes) -> tuple[list[bytes], str | None]:
    """What the receiver must do with an authenticated inner packet: (delivered, drop)."""
    n = len(inner)
    if n == 0:
        return [], None  # a keepalive
    version = inner[0] >> 4
    if version == 4 and n >= 20:
        length = int.from_bytes(inner[2:4], "big")
        if length < 20 or length > n:
            return [], "bad_packet"
        source = inner[12:16]
    elif version == 6 and n >= 40:
        length = 40 + int.from_bytes(inner[4:6], "big")
        if length > n:
            return [], "bad_packet"
        source = inner[8:24]
    else:
        return [], "bad_packet"
    if source != allowed_source:
        return [], "allowed_ips"
    return [inner[:length]], None
