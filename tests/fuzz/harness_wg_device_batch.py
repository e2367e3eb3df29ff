"""The batch receive path `wiretun up` runs (Device.receive_gro over UDP GRO buffers, the
native data path opening runs of transport messages) against receive_datagrams on the same
datagrams, one list: the documented equality. Two identical scenes (a pair after a
cookie-assisted handshake) see every input; one gets GRO buffers, the other the split
datagrams. The packets delivered (in order), the drops by reason, the datagrams queued to
send and the events must be the same, and nothing unauthenticated may be delivered.

Input: byte 0 picks the scene, then items, each a kind byte and a big-endian u16 length:
  byte 0, bit 0: receiving device (0: b, 1: a); bit 1: under load; bit 2: every datagram
         in its own buffer (else consecutive equal sizes share a GRO buffer, up to 64)
  kind 0: the bytes are a datagram as is
  kind 1: the bytes are an inner packet, sealed now with the sender's live keypair
          (consecutive counters: runs the native path opens, and decrypts)
  kind 2: the previous datagram again (a replay)
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from collections.abc import Sequence

from fuzz.harness_wg_device import REBUILD_EVERY, STEP, Scene, build_scene
from fuzz.runner import Harness
from wiretun import datapath
from wiretun.testing.wgpair import ipv4_packet
from wiretun.wireguard.device import Device
from wiretun.wireguard.events import Endpoint

MAX_ITEMS = 64
_ITEM = struct.Struct("!BH")


def encode(control: int, items: Sequence[tuple[int, bytes]]) -> bytes:
    return bytes([control]) + b"".join(_ITEM.pack(k, len(b)) + b for k, b in items)


def decode(data: bytes) -> tuple[int, list[tuple[int, bytes]]]:
    if not data:
        return 0, []
    items: list[tuple[int, bytes]] = []
    at = 1
    while at + _ITEM.size <= len(data) and len(items) < MAX_ITEMS:
        kind, n = _ITEM.unpack_from(data, at)
        items.append((kind % 3, data[at + _ITEM.size : at + _ITEM.size + n]))
        at += _ITEM.size + n
    return data[0], items


def gro_buffers(
    datagrams: Sequence[bytes], src: Endpoint, separate: bool
) -> list[tuple[bytes, int, Endpoint]]:
    """What UDP GRO hands over: runs of equal-size datagrams (the last may be shorter, and
    closes the run) in one buffer of at most 64, or each on its own. An empty datagram is
    never merged (it would vanish in the concatenation; the kernel does not merge one)."""
    out: list[tuple[bytes, int, Endpoint]] = []
    run: list[bytes] = []

    def joins(d: bytes) -> bool:
        if separate or not run or not d or len(run) >= 64:
            return False
        size = len(run[0])
        return len(d) <= size and len(run[-1]) == size

    for d in datagrams:
        if joins(d):
            run.append(d)
            continue
        if run:
            out.append((b"".join(run), len(run[0]), src))
        run = [d]
    if run:
        out.append((b"".join(run), len(run[0]), src))
    return out


class _Side:
    """One scene and its receiver's view of an input."""

    def __init__(self) -> None:
        if datapath.NATIVE is None:  # a silent fallback would hide the C path: fail instead
            raise AssertionError(f"native data path not built: {datapath.native_error()}")
        self.scene: Scene = build_scene(datapath.NATIVE)

    def parts(self, control: int) -> tuple[Device, Device, Endpoint]:
        pair = self.scene.pair
        if control & 1:
            return pair.a, pair.b, pair.b_addr
        return pair.b, pair.a, pair.a_addr

    def datagrams(self, control: int, items: Sequence[tuple[int, bytes]]) -> list[bytes]:
        receiver, sender, _ = self.parts(control)
        keypair = sender.peer(receiver.public_key).current
        out: list[bytes] = []
        for kind, body in items:
            if kind == 1 and keypair is not None and keypair.send_key is not None:
                out.append(keypair.seal(body))
            elif kind == 2 and out:
                out.append(out[-1])
            else:
                out.append(body)
        return out


class DeviceBatchHarness(Harness):
    name = "wg_device_batch"
    random_share = 0.02

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._gro, self._single = _Side(), _Side()
        self._count = 0
        self.delivered = 0  # packets both paths delivered (a test reads these)
        self.reasons: Counter[str] = Counter()

    def seeds(self) -> list[bytes]:
        a_to_b = [(1, ipv4_packet("10.0.0.1", "10.0.0.2", bytes([i]) * 100)) for i in range(8)]
        mixed = [*a_to_b[:3], (2, b""), (1, ipv4_packet("10.0.0.9", "10.0.0.2", b"spoof"))]
        mixed += [(1, b""), (0, b"\x04" + bytes(40)), *a_to_b[3:], (1, b"\x45" + bytes(30))]
        back = [(1, ipv4_packet("10.0.0.2", "10.0.0.1", bytes([i]) * 1300)) for i in range(40)]
        captured = [(0, d) for _s, _d, d in self._gro.scene.captured]
        return [
            encode(0, a_to_b),
            encode(4, a_to_b),
            encode(0, mixed),
            encode(1, back),
            encode(2, captured + a_to_b),
            encode(0, [*a_to_b, *captured[:2], *a_to_b]),
        ]

    def generate(self, rng: random.Random, pool: Sequence[bytes]) -> bytes:
        if pool and rng.random() < 0.7:
            # Mutate one item's bytes (or kind) and keep the framing.
            control, items = decode(rng.choice(pool))
            if items:
                i = rng.randrange(len(items))
                kind, body = items[i]
                if rng.random() < 0.2:
                    kind = rng.randrange(3)
                else:
                    body = super().generate(rng, [b for _, b in items])
                items[i] = (kind, body)
                if rng.random() < 0.3:
                    items.insert(rng.randrange(len(items) + 1), items[rng.randrange(len(items))])
                return encode(control ^ (rng.randrange(8) if rng.random() < 0.2 else 0), items)
        return super().generate(rng, pool)

    def check(self, data: bytes) -> None:
        control, items = decode(data)
        if not items:
            return
        self._count += 1
        if self._count > REBUILD_EVERY:
            self._gro, self._single = _Side(), _Side()
            self._count = 1
        results = []
        for side, batch in ((self._gro, True), (self._single, False)):
            pair = side.scene.pair
            receiver, _sender, src = side.parts(control)
            pair.clock.advance(STEP)
            datagrams = side.datagrams(control, items)
            before = Counter(receiver.stats().drops)
            receiver.under_load = bool(control & 2)
            try:
                if batch:
                    frames = datapath.NATIVE.coalescer(vnet=False, udp=False)  # type: ignore[union-attr]
                    receiver.receive_gro(gro_buffers(datagrams, src, bool(control & 4)),
                                         pair.clock.now, frames)  # fmt: skip
                    delivered = frames.finish()
                else:
                    delivered = receiver.receive_datagrams([(d, src) for d in datagrams],
                                                           pair.clock.now)  # fmt: skip
            finally:
                receiver.under_load = False
            sent = receiver.datagrams_to_send()
            events = []
            while (event := receiver.next_event()) is not None:
                events.append(type(event).__name__)
            grew = Counter(receiver.stats().drops)
            grew.subtract(before)
            results.append((datagrams, delivered, +grew, sent, events))
        (d1, got1, drops1, sent1, ev1), (d2, got2, drops2, sent2, ev2) = results
        assert d1 == d2, "the twin scenes fell out of step"
        assert got1 == got2, f"receive_gro delivered {got1!r}, receive_datagrams {got2!r}"
        assert drops1 == drops2, f"drops differ: gro {dict(drops1)}, singles {dict(drops2)}"
        assert sent1 == sent2 and ev1 == ev2, "replies or events differ"
        sealed = {body for kind, body in items if kind == 1}
        for packet in got1:
            assert any(body.startswith(packet) for body in sealed), "unauthenticated delivery"
        self.delivered += len(got1)
        self.reasons.update(drops1)
