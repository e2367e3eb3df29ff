"""The C data path (wiretun.datapath._native) against its pure twin, the specification.

Three harnesses, one per native entry point; each runs an input through both backends and
fails on any difference (results, drop counts, ring bytes, TUN frames) or on an exception
other than the documented one: ValueError for bad arguments, counters past 2**64 - 1
included (both sides must raise it then). Under scripts/fuzz_native_asan.sh the extension is
an AddressSanitizer/UBSan build and the native side gets its buffers as exactly sized
allocations (`array.array`), so a read or write one byte past what the network or the TUN
handed over aborts the run.

Input layouts (all fields are bytes a mutator may hit; every input decodes):

- native_seal: flags, mtu, max_bytes, counter and receiver choices, then TUN frames, each
  behind a big-endian u24 length.
- native_open: flags, replay position, ring pattern, u16 segment size, u24 start offset,
  u32 receiver, then the UDP GRO buffer of transport messages.
- native_coalesce: flags (udp, vnet, finish every k packets), then packets behind u24 lengths.
"""

from __future__ import annotations

import array
import random
import struct
from collections.abc import Callable, Sequence
from functools import lru_cache, partial
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from fuzz.harness_offload import flows
from fuzz.mutate import (
    BYTE_MUTATORS,
    HEADER_MUTATORS,
    SAME_LENGTH,
    header_mutator,
    mutate,
    set_byte,
)
from fuzz.runner import Harness
from test_tun_offload import ACK, PSH, Flow, packet, segments, super_frame, with_ipv6_ext
from wiretun import datapath
from wiretun.datapath import pure
from wiretun.tun.gso import F_NEEDS_CSUM, GSO_NONE, MAX_SEGMENTS, VNET_HDR, ZERO_VNET_HDR

KEY = bytes(range(32))
AEAD = ChaCha20Poly1305(KEY)
RECEIVER = 0x11223344
REJECT = 2**64 - 2**13 - 1  # replay.REJECT_AFTER_MESSAGES

MTUS = (0, 1, 17, 576, 1280, 1420, 1500, 9000, 65535)
MAX_BYTES = (1, 1500, 3000, 65507, 65527, 2**31 - 1)
COUNTERS = (0, 1, 2**32 - 1, 2**40, REJECT - 300, 2**64 - 300, 2**64 - 1)
NEXTS = (0, 1, 5, 64, 8128, 8200, 9000, 2**32, REJECT - 1, REJECT, REJECT + 1)

_HDR = struct.Struct("<IIQ")
_SEAL_HEAD = struct.Struct("!BBBBI")  # flags, mtu, max_bytes, counter, receiver xor
_OPEN_HEAD = struct.Struct("!BBBH3sI")  # flags, next, ring, segment, offset (u24), receiver


def _native() -> Any:
    module = datapath.native()
    if module is None:  # a silent skip would hide the C code: fail instead
        raise AssertionError(f"native data path not built: {datapath.native_error()}")
    return module


def exact(data: bytes) -> array.array[int]:
    """A copy in an allocation of exactly len(data) bytes (bytes keep a spare NUL at the end):
    with PYTHONMALLOC=malloc under ASan, a read one byte past it is a heap overflow. (Built
    by repetition, which allocates exactly; array("B", data) would over-allocate.)"""
    out = array.array("B", b"\0") * len(data)
    memoryview(out)[:] = data
    return out


def pack_items(items: Sequence[bytes]) -> bytes:
    return b"".join(len(x).to_bytes(3, "big") + x for x in items)


def unpack_items(data: bytes) -> list[bytes]:
    """Items behind u24 lengths; a length running past the end takes what is left."""
    out: list[bytes] = []
    at = 0
    while at + 3 <= len(data):
        n = int.from_bytes(data[at : at + 3], "big")
        out.append(data[at + 3 : at + 3 + n])
        at += 3 + n
    return out


def _same_outcome(call: Callable[[], Any], twin: Callable[[], Any]) -> tuple[Any, Any]:
    """Both calls' results, or (None, None) when both raised the same documented error."""
    try:
        want = twin()
    except (ValueError, OverflowError) as exc:
        try:
            call()
        except type(exc):
            return None, None
        raise AssertionError(f"pure raised {exc!r}, native did not") from exc
    return call(), want  # native raising where the twin did not is a finding


# --- seal -------------------------------------------------------------------------------


def payload(n: int, salt: int = 0) -> bytes:
    return bytes((i * 13 + salt) & 0xFF for i in range(n))


def _csum_partial(f: Flow, pkt: bytes) -> bytes:
    p = bytearray(pkt)
    at = f.iph + (16 if f.tcp else 6)
    p[at : at + 2] = b"\x12\x34"  # a partial sum the decoder completes (value irrelevant)
    return VNET_HDR.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, f.iph, at - f.iph) + bytes(p)


def super_packet(f: Flow, size: int, gso: int, *, flags: int = ACK | PSH) -> bytes:
    return super_frame(f, segments(f, payload(size, gso), gso, flags=flags), gso)


def _forged_csum_start(frame: bytes, csum_start: int) -> bytes:
    return frame[:6] + struct.pack("=H", csum_start) + frame[8:]


def seal_input(
    frames: Sequence[bytes],
    *,
    vnet: bool = True,
    mtu: int = 5,
    max_bytes: int = 3,
    counter: int = 0,
) -> bytes:
    """Indices into MTUS, MAX_BYTES and COUNTERS (defaults: 1420, 65507, 0)."""
    return _SEAL_HEAD.pack(int(vnet), mtu, max_bytes, counter, 0) + pack_items(frames)


def seal_seeds() -> list[bytes]:
    v4, v6 = Flow(), Flow(v6=True, options=b"\x01" * 12)
    u4, u6 = Flow(tcp=False), Flow(v6=True, tcp=False)
    return [
        # Small ones (these become corpus files).
        seal_input([super_packet(v4, 300, 100), packet(v4, b"plain")]),
        seal_input([super_packet(v6, 257, 100)], mtu=0, max_bytes=1),
        seal_input([super_packet(u4, 250, 100), super_packet(u6, 99, 536)]),
        seal_input([super_packet(v4, 256, 1)], counter=2),  # 256 segments: the old limit
        seal_input([super_packet(v4, 257, 1)]),  # 257: dropped before #15, sealed now
        seal_input([super_packet(v4, MAX_SEGMENTS, 1)]),  # the limit
        seal_input([super_packet(v4, MAX_SEGMENTS + 1, 1)]),  # too_many_segments
        seal_input([_csum_partial(v4, packet(v4, b"x" * 33)), _csum_partial(u6, packet(u6, b""))]),
        seal_input([ZERO_VNET_HDR + packet(u4, b"zero"), b"\x01" * 5, b"", ZERO_VNET_HDR]),
        seal_input([packet(v4, payload(n)) for n in (0, 1, 15, 16, 17, 100)], vnet=False),
        seal_input([b"", b"\x45", payload(1500)], vnet=False, mtu=4, counter=2),
        seal_input([super_packet(v4, 400, 100)] * 3, counter=5),  # 12 counters below 2**64
        seal_input([packet(v4, b"last")], counter=6),  # counter 2**64 - 1: the very last one
        seal_input([super_packet(v4, 200, 100)], counter=6),  # past 2**64: ValueError
        # Big ones: super-packets near 64 KB, at MTU 280 (past the old 256 segments) and at
        # the 48-byte minimum MSS, IPv6 with extension headers or a forged csum_start.
        seal_input([super_packet(v4, 65535 - 40, 1368), packet(v4, b"tail")]),
        seal_input([super_packet(v4, 256 * 255, 255)], mtu=0),
        seal_input([super_packet(v4, 65535 - 40, 240)], mtu=4),
        seal_input([super_packet(v6, 65535 - 72, 48)], max_bytes=4),
        seal_input([with_ipv6_ext(super_packet(Flow(v6=True), 20000, 1000), [8, 16])]),
        seal_input([_forged_csum_start(super_packet(Flow(v6=True), 65000, 48), 4000)]),
        seal_input([super_packet(v6, 65535 - 72, 1380)], max_bytes=4),
        seal_input([super_packet(u4, 65535 - 28, 1400), super_packet(u6, 30000, 536)]),
        seal_input([packet(v4, payload(1380), seq=i) for i in range(48)], vnet=False),
    ]


def decode_seal(data: bytes) -> tuple[bool, bool, int, int, int, int, list[bytes]]:
    """(vnet, exact buffers, mtu, max_bytes, counter, receiver, frames)."""
    head = data[: _SEAL_HEAD.size].ljust(_SEAL_HEAD.size, b"\0")
    flags, mtu, max_bytes, counter, receiver = _SEAL_HEAD.unpack(head)
    return (
        bool(flags & 1),
        not flags & 2,
        MTUS[mtu % len(MTUS)],
        MAX_BYTES[max_bytes % len(MAX_BYTES)],
        COUNTERS[counter % len(COUNTERS)],
        RECEIVER ^ receiver,
        unpack_items(data[_SEAL_HEAD.size :]),
    )


class NativeSealHarness(Harness):
    """seal: TUN frames (vnet or not) to transport messages, native == pure bit for bit."""

    name = "native_seal"

    def seeds(self) -> list[bytes]:
        return seal_seeds()

    def generate(self, rng: random.Random, pool: Sequence[bytes]) -> bytes:
        if pool and rng.random() < 0.6:
            data = rng.choice(pool)
            head, frames = data[: _SEAL_HEAD.size], unpack_items(data[_SEAL_HEAD.size :])
            if frames and rng.random() < 0.85:
                # Keep the framing; mutate one frame, mostly its headers (vnet, IP, L4).
                i = rng.randrange(len(frames))
                frames[i] = mutate(rng, frames[i], frames, HEADER_MUTATORS)
                if rng.random() < 0.1:
                    frames.insert(rng.randrange(len(frames) + 1), rng.choice(frames))
            if rng.random() < 0.2:
                head = set_byte(rng, head, pool)
            return head + pack_items(frames)
        return super().generate(rng, pool)

    def check(self, data: bytes) -> None:
        native = _native()
        vnet, exact_bufs, mtu, max_bytes, counter, receiver, frames = decode_seal(data)
        mine: list[Any] = [exact(f) for f in frames] if exact_bufs else list(frames)
        args = (KEY, receiver, counter, mtu, max_bytes, vnet)
        got, want = _same_outcome(
            lambda: native.seal(mine, *args), lambda: pure.seal(frames, *args)
        )
        if got is None:
            return
        assert got == want, "native seal differs from pure"
        for f, m in zip(frames, mine, strict=True):
            assert native.segments(m, vnet) == pure.segments(f, vnet)
        buf, groups, used, _drops = got
        assert sum(b for _, b in groups) == len(buf)
        assert all(-(-b // s) <= 64 and (b <= max_bytes or b == s) for s, b in groups)
        if used:
            assert _HDR.unpack_from(buf) == (4, receiver, counter)


# --- open -------------------------------------------------------------------------------


def _table(entries: Sequence[tuple[bytes, int, bool]]) -> bytes:
    return b"".join(
        a + bytes([p, int(ok)]) + bytes(2 if len(a) == 4 else 6) for a, p, ok in entries
    )


_FD = bytes([0xFD] + [0] * 15)
# (allowed_v4, allowed_v6): the test's, nothing, everything, hostile (plen > 32/128, odd length).
TABLES = (
    (_table([(bytes([10, 0, 0, 0]), 8, True), (bytes([10, 0, 0, 99]), 32, False)]),
     _table([(_FD, 8, True)])),
    (b"", b""),
    (_table([(bytes(4), 0, True)]), _table([(bytes(16), 0, True)])),
    (_table([(bytes([10, 0, 0, 1]), 33, True), (bytes([10, 0, 0, 0]), 31, True)]) + b"\x0a",
     _table([(_FD, 129, True), (_FD, 127, True)]) + bytes(23)),
)  # fmt: skip

SOURCES = {
    4: (bytes([10, 0, 0, 1]), bytes([10, 0, 0, 99]), bytes([192, 168, 0, 1]), bytes(4)),
    16: (bytes([0xFD] + [0] * 14 + [1]), bytes([0xFE, 0x80] + [0] * 14), bytes(16)),
}


@lru_cache(maxsize=64)
def ring_for(pattern: int) -> bytes:
    """The replay ring an input starts from: empty, full, or a seeded pattern of marks."""
    if pattern == 0:
        return bytes(8192)
    if pattern == 1:
        return b"\x01" * 8192
    raw = random.Random(pattern).randbytes(8192)
    if pattern & 1:
        return raw  # any nonzero byte means "seen", on both sides
    return raw.translate(bytes(b & 1 for b in range(256)))


def _nonce(counter: int) -> bytes:
    return b"\0" * 4 + struct.pack("<Q", counter)


def seal_message(receiver: int, counter: int, plain: bytes) -> bytes:
    return _HDR.pack(4, receiver, counter) + AEAD.encrypt(_nonce(counter), plain, None)


def padded(pkt: bytes, mtu: int = 1420) -> bytes:
    return pkt + bytes(pure.padding_size(len(pkt), mtu))


def open_input(
    messages: Sequence[bytes],
    *,
    segment: int | None = None,
    offset: int = 0,
    flags: int = 2,
    next_at: int = 0,
    ring: int = 0,
    receiver: int = RECEIVER,
) -> bytes:
    """flags: 1 udp, 2 vnet, 4 plain bytes (not exact), 8..64 table, 128 bad key;
    next_at indexes NEXTS; ring is ring_for's pattern."""
    seg = segment if segment is not None else (len(messages[0]) if messages else 100)
    head = _OPEN_HEAD.pack(flags, next_at, ring, seg, offset.to_bytes(3, "big"), receiver)
    return head + b"".join(messages)


def decode_open(data: bytes) -> tuple[int, int, int, int, int, int, bytes]:
    """(flags, next, ring pattern, segment, offset, receiver, buffer)."""
    head = data[: _OPEN_HEAD.size].ljust(_OPEN_HEAD.size, b"\0")
    flags, nxt, ring, segment, offset, receiver = _OPEN_HEAD.unpack(head)
    return (
        flags,
        NEXTS[nxt % len(NEXTS)],
        ring,
        segment,
        int.from_bytes(offset, "big"),
        receiver,
        data[_OPEN_HEAD.size :],
    )


def _tcp_run(f: Flow, count: int, size: int, *, first: int = 0) -> list[bytes]:
    segs = segments(f, payload(count * size), size)
    return [seal_message(RECEIVER, first + i, padded(s)) for i, s in enumerate(segs)]


def open_seeds() -> list[bytes]:
    v4, v6, u4 = Flow(), Flow(v6=True), Flow(tcp=False)
    foreign = bytearray(packet(v4, b"y" * 28))
    foreign[12:16] = bytes([10, 0, 0, 99])  # a source the table denies
    nobody = bytearray(packet(v4, b"z" * 28))
    nobody[12:16] = bytes([192, 168, 0, 1])
    same = [packet(u4, payload(30, i), ip_id=i) for i in range(3)]
    mixed = [
        seal_message(RECEIVER, 0, padded(same[0])),
        seal_message(RECEIVER, 1, padded(bytes(foreign))),
        seal_message(RECEIVER, 2, padded(bytes(nobody))),
        seal_message(RECEIVER, 3, padded(payload(64))),  # not IP
        seal_message(RECEIVER, 4, padded(same[1][:30] + bytes(34))),  # IP length > data
        seal_message(RECEIVER, 1, padded(same[2])),  # a replay
    ]
    forged = bytearray(seal_message(RECEIVER, 7, padded(same[2])))
    forged[-1] ^= 1
    wrong = bytearray(seal_message(RECEIVER, 8, padded(same[2])))
    wrong[4] ^= 1  # another receiver: the run stops there
    keepalive = seal_message(RECEIVER, 9, b"")
    one = len(_tcp_run(v4, 1, 100)[0])
    return [
        # Small ones (these become corpus files).
        open_input(_tcp_run(v4, 4, 100)),
        open_input(_tcp_run(v6, 3, 120, first=5), next_at=2, ring=2, flags=3),
        open_input([seal_message(RECEIVER, i, padded(p)) for i, p in enumerate(same)], flags=3),
        open_input(mixed, segment=len(mixed[0])),
        open_input([*mixed[:2], bytes(forged), bytes(wrong), keepalive], segment=len(mixed[0])),
        open_input(_tcp_run(v4, 3, 100, first=8190), next_at=6, ring=4),  # around the window
        open_input(_tcp_run(v4, 3, 100), offset=one, flags=0),
        open_input([keepalive, keepalive], next_at=3),
        # Big ones (kept in code only): full GRO buffers of 64 datagrams.
        open_input(_tcp_run(v4, 64, 1368)),
        open_input(_tcp_run(v6, 64, 1348, first=100), next_at=6, ring=3, flags=2 | 16),
        open_input(
            [seal_message(RECEIVER, i, padded(packet(u4, payload(1400, i)))) for i in range(64)],
            flags=3,
        ),
    ]


def _decrypt(msg: bytes) -> bytes | None:
    if len(msg) < 32:
        return None
    try:
        return AEAD.decrypt(_nonce(_HDR.unpack_from(msg)[2]), msg[16:], None)
    except InvalidTag:
        return None


def _reseal(msg: bytes, plain: bytes, counter: int | None = None) -> bytes:
    kind, receiver, ctr = _HDR.unpack_from(msg)
    ctr = ctr if counter is None else counter
    return _HDR.pack(kind, receiver, ctr) + AEAD.encrypt(_nonce(ctr), plain, None)


def _inner_fields(rng: random.Random, plain: bytes) -> bytes:
    """The fields open_run checks itself: version, inner length, source address."""
    p = bytearray(plain)
    v6 = plain[0] >> 4 == 6
    field = rng.randrange(3)
    if field == 0:
        p[0] = rng.choice((0x45, 0x60, 0x40, 0x4F, 0x00, 0xF0))
    elif field == 1 and len(p) >= 6:
        at = 4 if v6 else 2
        value = rng.choice((0, 1, 19, 20, 40, len(p) - 40, len(p) - 41, len(p), 0xFFFF))
        p[at : at + 2] = (value & 0xFFFF).to_bytes(2, "big")
    elif len(p) >= (24 if v6 else 16):
        at, n = (8, 16) if v6 else (12, 4)
        p[at : at + n] = rng.choice(SOURCES[n])
    return bytes(p)


def _mutate_run(rng: random.Random, msgs: list[bytes], pool: Sequence[bytes]) -> None:
    """One change to a run of messages that keeps tags valid where it can (so the AEAD passes
    and the replay, inner-length and allowed-ips checks see attacker-chosen values)."""
    i = rng.randrange(len(msgs))
    op = rng.randrange(9)
    plain = _decrypt(msgs[i])
    if op == 8 and plain:
        msgs[i] = _reseal(msgs[i], _inner_fields(rng, plain))
    elif op <= 2 and plain is not None:
        # The inner packet, same length (so the GRO framing holds), re-sealed.
        msgs[i] = _reseal(msgs[i], mutate(rng, plain, [], SAME_LENGTH))
    elif op == 3 and plain is not None:
        # Any new length: the last datagram of a buffer may be shorter (or not: then the
        # run's framing breaks, which the native side must also survive).
        new = mutate(rng, plain, [], BYTE_MUTATORS)
        if i != len(msgs) - 1 and rng.random() < 0.7:
            new = new[: len(plain)].ljust(len(plain), b"\0")
        msgs[i] = _reseal(msgs[i], new)
    elif op == 4 and plain is not None:
        # Another counter, validly sealed: replays, jumps past the ring, the reject limit.
        choices = (0, 1, REJECT - 1, REJECT, 2**64 - 1, 8128, 8192, 8193, 9000)
        other = msgs[rng.randrange(len(msgs))]
        ctr = _HDR.unpack_from(other)[2] if len(other) >= 16 else 0
        ctr = rng.choice((ctr, ctr + 1, ctr + rng.randrange(1, 20000), rng.choice(choices)))
        msgs[i] = _reseal(msgs[i], plain, ctr % 2**64)
    elif op == 5:
        j = rng.randrange(len(msgs))
        if rng.random() < 0.5:
            msgs.insert(j, msgs[i])  # a replay
        else:
            msgs[i], msgs[j] = msgs[j], msgs[i]
    elif op == 6:
        msgs[i] = header_mutator(rng, msgs[i][:16], pool) + msgs[i][16:]  # type/receiver/counter
    else:
        msgs[i] = mutate(rng, msgs[i], pool, BYTE_MUTATORS)  # the tag will not verify


class NativeOpenHarness(Harness):
    """open_run on one UDP GRO buffer (segment size, start offset, replay ring and position
    from the input), run on as the caller does past a datagram it stops at; native == pure:
    every returned tuple, the ring bytes and the coalesced TUN frames."""

    name = "native_open"

    def seeds(self) -> list[bytes]:
        return open_seeds()

    def generate(self, rng: random.Random, pool: Sequence[bytes]) -> bytes:
        if not pool or rng.random() < 0.25:
            return super().generate(rng, pool)
        data = rng.choice(pool)
        head, buf = data[: _OPEN_HEAD.size], data[_OPEN_HEAD.size :]
        seg = max(decode_open(data)[3], 1)
        msgs = [buf[k : k + seg] for k in range(0, len(buf), seg)]
        for _ in range(1 + rng.randrange(3)):
            r = rng.random()
            if msgs and r < 0.7:
                _mutate_run(rng, msgs, pool)
            elif r < 0.8:
                # Segment size and start offset, near the real ones.
                new_seg = rng.choice((seg + rng.randrange(-17, 18), rng.randrange(1, 2000), 32))
                offset = rng.choice((0, seg * rng.randrange(4), rng.randrange(len(buf) + 2)))
                head = (
                    head[:3]
                    + max(0, min(new_seg, 0xFFFF)).to_bytes(2, "big")
                    + min(offset, 0xFFFFFF).to_bytes(3, "big")
                    + head[8:]
                )
            elif r < 0.9:
                head = header_mutator(rng, head, pool)  # flags, position, ring, receiver
            elif msgs:
                if rng.random() < 0.5:
                    del msgs[rng.randrange(len(msgs)) :]
                else:
                    msgs[-1] = msgs[-1][: rng.randrange(len(msgs[-1]) + 1)]
        return head + b"".join(msgs)

    def check(self, data: bytes) -> None:
        native = _native()
        flags, nxt, ring_pattern, segment, offset, receiver, buf = decode_open(data)
        udp, vnet, exact_buf = bool(flags & 1), bool(flags & 2), not flags & 4
        tables = TABLES[(flags >> 3) % len(TABLES)]
        key = KEY if not flags & 0x80 else KEY[:31]
        mine: Any = exact(buf) if exact_buf else buf
        rings = [bytearray(ring_for(ring_pattern)) for _ in range(2)]
        coalescers = [native.Coalescer(vnet=vnet, udp=udp), pure.Coalescer(vnet=vnet, udp=udp)]
        pos = offset
        for _ in range(300):  # bounded: every step but the first moves on a datagram or more
            tail = (segment, key, receiver)
            got, want = _same_outcome(
                partial(native.open_run, mine, pos, *tail, rings[0], nxt, *tables, coalescers[0]),
                partial(pure.open_run, buf, pos, *tail, rings[1], nxt, *tables, coalescers[1]),
            )
            if got is None:
                break
            assert got == want, f"open_run at {pos}: native {got} != pure {want}"
            assert rings[0] == rings[1], f"open_run at {pos}: replay rings differ"
            assert coalescers[0].pending() == coalescers[1].pending()
            if got[0] == pos:
                pos += segment  # the per-datagram path would take this one
            else:
                pos, nxt = got[0], got[1]
            if pos >= len(buf):
                break
        assert coalescers[0].finish() == coalescers[1].finish(), "coalesced frames differ"


# --- coalesce ---------------------------------------------------------------------------


def coalesce_input(
    packets: Sequence[bytes], *, udp: bool, vnet: bool = True, every: int = 0
) -> bytes:
    return bytes([int(udp) | int(vnet) << 1 | every << 2]) + pack_items(packets)


def coalesce_seeds() -> list[bytes]:
    out = [coalesce_input(packets, udp=udp) for udp, packets in flows()]
    v4, v6 = Flow(), Flow(v6=True, options=b"\x01\x01\x08\x0a" + bytes(8))
    u4, u6 = Flow(tcp=False), Flow(v6=True, tcp=False)
    same_id = [packet(v4, payload(50, i), seq=1 + 50 * i, ip_id=9) for i in range(4)]
    out += [
        # Small ones (these become corpus files).
        coalesce_input(same_id, udp=False, every=2),  # DF with a fixed IP ID merges
        coalesce_input(segments(v6, payload(300), 100, flags=ACK | PSH), udp=True, vnet=False),
        coalesce_input([packet(u6, payload(40, i), ip_id=i) for i in range(5)], udp=True, every=3),
        coalesce_input([b"", b"\x45", packet(v4, b"")[:27], packet(v4, b"")], udp=False),
        # Big ones (kept in code only): the 64 KB and 64-datagram limits.
        coalesce_input(segments(v4, payload(49 * 1368), 1368), udp=False),
        coalesce_input(segments(v6, payload(64 * 1000), 1000), udp=True),
        coalesce_input([packet(u4, payload(100, i), ip_id=i) for i in range(70)], udp=True),
        coalesce_input([packet(u6, payload(1000, i)) for i in range(66)], udp=True),
    ]
    return out


class NativeCoalesceHarness(Harness):
    """Coalescer: a packet sequence (decrypted, so attacker-shaped) into TUN write frames,
    vnet or not, UDP merging on or off, finished every k packets; native == pure."""

    name = "native_coalesce"

    def seeds(self) -> list[bytes]:
        return coalesce_seeds()

    def generate(self, rng: random.Random, pool: Sequence[bytes]) -> bytes:
        if pool and rng.random() < 0.6:
            data = rng.choice(pool)
            packets = unpack_items(data[1:])
            if packets:
                for _ in range(1 + rng.randrange(2)):
                    i = rng.randrange(len(packets))
                    packets[i] = mutate(rng, packets[i], packets, HEADER_MUTATORS)
                if rng.random() < 0.1:
                    j = rng.randrange(len(packets))
                    packets.insert(j, packets[rng.randrange(len(packets))])
            head = data[:1] if rng.random() < 0.8 else bytes([rng.randrange(256)])
            return head + pack_items(packets)
        return super().generate(rng, pool)

    def check(self, data: bytes) -> None:
        native = _native()
        flags = data[0] if data else 0
        udp, vnet, every = bool(flags & 1), bool(flags & 2), flags >> 2
        packets = unpack_items(data[1:])
        a, b = native.Coalescer(vnet=vnet, udp=udp), pure.Coalescer(vnet=vnet, udp=udp)
        for k, p in enumerate(packets, 1):
            a.add(exact(p))
            b.add(p)
            if every and k % every == 0:
                assert a.finish() == b.finish(), f"frames differ after packet {k}"
        assert a.pending() == b.pending()
        assert a.finish() == b.finish(), "frames differ"
        assert a.pending() == 0 and a.finish() == []
