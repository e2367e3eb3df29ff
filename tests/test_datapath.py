"""The native data path against its pure-Python twin: same inputs, bit-equal outputs.

Inputs are what the TUN and the network really deliver (TSO/USO super-packets, plain and
CHECKSUM_PARTIAL packets, GRO buffers) plus what an attacker could send (mutated frames,
forged tags, replays, wrong receivers, bad inner packets, foreign sources).
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from test_tun_offload import ACK, PSH, Flow, packet, segments, super_frame, with_ipv6_ext
from wiretun import datapath
from wiretun.datapath import pure
from wiretun.tun.gso import F_NEEDS_CSUM, GSO_NONE, VNET_HDR, OffloadStats, decode_frame
from wiretun.wireguard.replay import ReplayWindow

# CI and `make test` build the extension: a silent fallback must not turn these into skips.
# Only a run that says so (WIRETUN_ALLOW_PURE=1, e.g. a machine without a compiler) skips.
if datapath.native() is None and os.environ.get("WIRETUN_ALLOW_PURE") == "1":
    pytest.skip(f"native data path not built: {datapath.native_error()}", allow_module_level=True)
from wiretun.datapath import _native as native  # fails loudly when not built

KEY = bytes(range(32))
MAX4 = 65507
AEAD = ChaCha20Poly1305(KEY)


def nonce(counter: int) -> bytes:
    return b"\0" * 4 + struct.pack("<Q", counter)


def message(receiver: int, counter: int, plain: bytes) -> bytes:
    """A transport message as a peer seals it (padded to 16 within an MTU of 1420)."""
    padded = plain + bytes(pure.padding_size(len(plain), 1420))
    return struct.pack("<IIQ", 4, receiver, counter) + AEAD.encrypt(nonce(counter), padded, None)


def frame_for(rng: random.Random, vnet: bool) -> bytes:
    """One TUN read: a super-packet, a plain or CHECKSUM_PARTIAL packet, or garbage."""
    f = Flow(v6=rng.random() < 0.4, tcp=rng.random() < 0.7, options=b"\x01" * 4 * rng.randint(0, 3))
    if not f.tcp:
        f.options = b""
    kind = rng.random()
    gso = rng.choice([1, 100, 536, 1368, 1380, 1400])
    size = rng.randint(1, 20000)
    if -(-size // gso) > 64:
        size = gso * 64
    segs = segments(f, os.urandom(size), gso, seq=rng.getrandbits(32), ip_id=rng.getrandbits(16),
                    flags=ACK | PSH if rng.random() < 0.5 else ACK)  # fmt: skip
    if not vnet:
        return segs[0] if kind < 0.9 else os.urandom(rng.randint(0, 60))
    if kind < 0.6:
        frame = super_frame(f, segs, gso)
    elif kind < 0.75:
        frame = bytes(10) + segs[0]
    elif kind < 0.85:
        p = bytearray(segs[0])
        at = f.iph + (16 if f.tcp else 6)
        p[at : at + 2] = b"\x12\x34"  # a partial sum the decoder completes (value irrelevant)
        frame = VNET_HDR.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, f.iph, at - f.iph) + bytes(p)
    else:
        bad = bytearray(super_frame(f, segs, gso))
        for _ in range(rng.randint(1, 4)):  # mutate header bytes: every check gets its turn
            i = rng.randrange(min(len(bad), 80))
            bad[i] = rng.getrandbits(8)
        frame = bytes(bad[: rng.randint(0, len(bad))]) if rng.random() < 0.3 else bytes(bad)
    return frame


@given(seed=st.integers(0, 2**32), vnet=st.booleans(), mtu=st.sampled_from([0, 1280, 1420, 9000]))
@settings(max_examples=120, deadline=None)
def test_seal_native_equals_pure(seed: int, vnet: bool, mtu: int) -> None:
    rng = random.Random(seed)
    frames = [frame_for(rng, vnet) for _ in range(rng.randint(0, 6))]
    counter = rng.choice([0, 1, 2**40])
    args = (frames, KEY, 0x11223344, counter, mtu, rng.choice([MAX4, 65527, 3000]), vnet)
    got = native.seal(*args)
    assert got == pure.seal(*args)
    # And both are right, not merely equal: the messages open to the decoder's segments.
    buf, groups, used, _ = got
    want = [s for f in frames for s in (decode_frame(f, OffloadStats()) if vnet else [f])]
    assert used == len(want)
    assert sum(b for _, b in groups) == len(buf)
    aead = AEAD
    at = 0
    for i, seg in enumerate(want):
        n = 32 + len(seg) + pure.padding_size(len(seg), mtu)
        kind, receiver, ctr = struct.unpack_from("<IIQ", buf, at)
        assert (kind, receiver, ctr) == (4, 0x11223344, counter + i)
        plain = aead.decrypt(nonce(counter + i), buf[at + 16 : at + n], None)
        assert plain[: len(seg)] == seg and not any(plain[len(seg) :])
        at += n
    assert at == len(buf)


def test_seal_frame_checks_equal_pure() -> None:
    """The frame checks added for issue #15 hold in C as in Python: super-packets past 256
    segments seal, IPv6 extension headers are walked, a forged csum_start or a split that
    would grow past MAX_SPLIT_BYTES is dropped and counted by the same reason."""
    v4, v6 = Flow(), Flow(v6=True)
    small_mss = super_frame(v4, segments(v4, bytes(65000), 240), 240)
    ext = with_ipv6_ext(super_frame(v6, segments(v6, bytes(9000), 1000), 1000), [8, 24])
    forged = bytearray(super_frame(v6, segments(v6, bytes(65000), 48), 48))
    struct.pack_into("=H", forged, 6, 4000)
    huge = with_ipv6_ext(super_frame(v6, segments(v6, bytes(20000), 48), 48), [2040] * 3)
    frames = [small_mss, ext, bytes(forged), huge]
    got = native.seal(frames, KEY, 7, 0, 1420, MAX4, True)
    assert got == pure.seal(frames, KEY, 7, 0, 1420, MAX4, True)
    assert got[2] == 271 + 9  # segments sealed
    assert got[3] == {"bad_gso_header": 1, "split_too_large": 1}
    assert native.segments(small_mss, True) == pure.segments(small_mss, True) == 271


def test_seal_groups_follow_udp_segment_rules() -> None:
    f = Flow()
    segs = segments(f, bytes(50000), 1368)
    frame = super_frame(f, segs, 1368)
    _, groups, used, _ = native.seal([frame, frame], KEY, 1, 0, 1420, MAX4, True)
    assert used == 2 * len(segs)
    for size, nbytes in groups:
        assert -(-nbytes // size) <= 64 and nbytes <= MAX4
    # A frame's short last segment closes its group: the next frame starts a new one.
    assert [s for s, _ in groups].count(groups[0][0]) >= 2


def test_seal_may_use_the_last_counter() -> None:
    """Regression (found by the native_seal fuzzer): native refused counter 2**64 - 1 for a
    single segment (its overflow check was off by one) while pure sealed it; past 2**64 pure
    raised struct.error. Now both seal up to 2**64 - 1 and raise ValueError beyond."""
    pkt = packet(Flow(), b"last")
    for backend in (native, pure):
        buf, _, used, _ = backend.seal([pkt], KEY, 1, 2**64 - 1, 1420, MAX4, False)
        assert used == 1 and struct.unpack_from("<Q", buf, 8) == (2**64 - 1,)
        got = backend.seal([pkt, pkt], KEY, 1, 2**64 - 2, 1420, MAX4, False)
        assert got == native.seal([pkt, pkt], KEY, 1, 2**64 - 2, 1420, MAX4, False)
        with pytest.raises(ValueError, match="counter out of range"):
            backend.seal([pkt, pkt], KEY, 1, 2**64 - 1, 1420, MAX4, False)


def test_segments_counts_without_sealing() -> None:
    f = Flow()
    segs = segments(f, bytes(10000), 1000)
    frame = super_frame(f, segs, 1000)
    assert native.segments(frame, True) == pure.segments(frame, True) == 10
    assert native.segments(b"\x01" * 5, True) == pure.segments(b"\x01" * 5, True) == 0


def test_bad_arguments_raise() -> None:
    for backend in (native, pure):
        with pytest.raises(ValueError, match="32 bytes"):
            backend.seal([], b"short", 0, 0, 1420, MAX4, True)
        with pytest.raises(ValueError, match="8192"):
            backend.open_run(b"", 0, 100, KEY, 0, bytearray(10), 0, b"", b"",
                             backend.Coalescer())  # fmt: skip
    with pytest.raises(TypeError):
        native.open_run(b"", 0, 100, KEY, 0, bytearray(8192), 0, b"", b"", pure.Coalescer())  # type: ignore[arg-type]


# --- inbound -------------------------------------------------------------------------------


def table(entries: list[tuple[bytes, int, bool]]) -> bytes:
    out = b""
    for addr, plen, allow in entries:
        pad = 2 if len(addr) == 4 else 6
        out += addr + bytes([plen, int(allow)]) + bytes(pad)
    return out


ALLOW4 = table([(bytes([10, 0, 0, 0]), 8, True), (bytes([10, 0, 0, 99]), 32, False)])
ALLOW6 = table([(bytes([0xFD] + [0] * 15), 8, True)])


def inner_packets(rng: random.Random) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(rng.randint(1, 12)):
        f = Flow(v6=rng.random() < 0.3, tcp=rng.random() < 0.8, sport=rng.choice([1, 2]))
        segs = segments(f, os.urandom(rng.randint(1, 6000)), rng.choice([500, 1368]),
                        seq=rng.getrandbits(32), ip_id=rng.getrandbits(16))  # fmt: skip
        out.extend(segs)
    r = rng.random()
    if r < 0.1:
        out.append(b"")  # keepalive
    elif r < 0.2:
        out.append(os.urandom(rng.randint(1, 50)))  # not IP
    elif r < 0.3:
        p = bytearray(packet(Flow(), b"x" * 10))
        p[12:16] = bytes([10, 0, 0, 99])  # a source another peer owns
        out.append(bytes(p))
    elif r < 0.4:
        p = bytearray(packet(Flow(), b"x" * 10))
        p[12:16] = bytes([192, 168, 0, 1])  # a source nobody owns
        out.append(bytes(p))
    return out


def gro_buffers(rng: random.Random, plains: list[bytes], receiver: int) -> list[tuple[bytes, int]]:
    """The messages sealing `plains`, some damaged, as UDP GRO would hand them over: buffers
    of consecutive equal-size datagrams (the last of each may be shorter) and their size."""
    msgs = []
    for i, p in enumerate(plains):
        ctr = i if rng.random() < 0.9 else rng.choice([0, i, i + 300, 2**64 - 1])
        m = bytearray(message(receiver, ctr, p))
        r = rng.random()
        if r < 0.03:
            m[-1] ^= 1  # forged tag
        elif r < 0.05:
            m[4] ^= 1  # another receiver: the run stops here
        elif r < 0.06:
            m[0] = 1  # a handshake-looking message
        msgs.append(bytes(m))
    return gro(msgs)


def gro(datagrams: list[bytes]) -> list[tuple[bytes, int]]:
    """Datagrams as UDP GRO hands them over: (buffer, segment size) of consecutive equal
    sizes, a shorter one last; an empty datagram is a receive of its own."""
    out: list[tuple[bytes, int]] = []
    group: list[bytes] = []
    for d in datagrams:
        if group and (not d or len(d) > len(group[0]) or len(group[-1]) < len(group[0])):
            out.append((b"".join(group), len(group[0])))
            group = []
        if not d:
            out.append((d, 1))
            continue
        group.append(d)
    if group:
        out.append((b"".join(group), len(group[0])))
    return out


def run_both(buffers: list[tuple[bytes, int]], receiver: int, udp: bool, start_next: int) -> None:
    results = []
    for backend in (native, pure):
        ring = bytearray(8192)
        c = backend.Coalescer(vnet=True, udp=udp)
        nxt, steps = start_next, []
        for buf, seg in buffers:
            pos = 0
            while pos < len(buf):
                r = backend.open_run(buf, pos, seg, KEY, receiver, ring, nxt, ALLOW4, ALLOW6, c)
                steps.append(r)
                if r[0] == pos:
                    pos += seg  # the caller's per-datagram path would take this one
                else:
                    pos, nxt = r[0], r[1]
        results.append((steps, bytes(ring), c.finish()))
    assert results[0] == results[1]
    if start_next == 0:
        # Most of it opened (a few percent is damaged): the runs did real work.
        sent = sum(-(-len(buf) // seg) for buf, seg in buffers)
        assert sum(r[2] for r in results[0][0]) >= sent // 2


@given(seed=st.integers(0, 2**32), udp=st.booleans())
@settings(max_examples=120, deadline=None)
def test_open_run_native_equals_pure(seed: int, udp: bool) -> None:
    rng = random.Random(seed)
    plains = inner_packets(rng)
    run_both(gro_buffers(rng, plains, 7), 7, udp, rng.choice([0, 5, 9000]))


def test_open_run_decrypts_and_coalesces() -> None:
    f = Flow()
    segs = segments(f, bytes(range(256)) * 40, 1368)
    msgs = [message(3, i, s) for i, s in enumerate(segs)]
    buf = b"".join(msgs)
    seg = len(msgs[0])
    c = native.Coalescer(vnet=True)
    ring = bytearray(8192)
    got = native.open_run(buf, 0, seg, KEY, 3, ring, 0, ALLOW4, ALLOW6, c)
    n = len(segs)
    assert got == (len(buf), n, n, len(buf), True, (0, 0, 0, 0))
    frames = c.finish()
    assert len(frames) == 1 and decode_frame(frames[0], OffloadStats()) == segs
    # The same buffer again: every counter is a replay now, nothing is delivered.
    r = native.open_run(buf, 0, seg, KEY, 3, ring, n, ALLOW4, ALLOW6, c)
    assert r[2] == 0 and r[5] == (len(segs), 0, 0, 0) and c.finish() == []


@given(seed=st.integers(0, 2**32), udp=st.booleans(), vnet=st.booleans())
@settings(max_examples=150, deadline=None)
def test_coalescer_native_equals_pure(seed: int, udp: bool, vnet: bool) -> None:
    rng = random.Random(seed)
    packets = inner_packets(rng)
    if rng.random() < 0.3:
        rng.shuffle(packets)
    a, b = native.Coalescer(vnet=vnet, udp=udp), pure.Coalescer(vnet=vnet, udp=udp)
    for p in packets:
        a.add(p)
        b.add(p)
    assert a.pending() == b.pending() == len(packets)
    assert a.finish() == b.finish()
    assert a.pending() == 0 and a.finish() == []


def test_empty_packet_first_into_a_fresh_coalescer() -> None:
    """Regression (UBSan, native_coalesce harness): the first packet being empty left the
    Coalescer's arena unallocated and add() did memcpy(NULL, buf, 0), undefined behaviour.
    Now the arena is always allocated; the frames equal the twin's (a bare vnet header)."""
    for vnet in (True, False):
        a, b = native.Coalescer(vnet=vnet), pure.Coalescer(vnet=vnet)
        for p in (b"", packet(Flow(), b"x"), b""):
            a.add(p)
            b.add(p)
        assert a.finish() == b.finish()
    # The same through open_run: a keepalive first, then an empty inner packet is refused.
    c = native.Coalescer()
    ka = message(5, 0, b"")
    r = native.open_run(ka, 0, len(ka), KEY, 5, bytearray(8192), 0, b"", b"", c)
    assert r[2] == 1 and not r[4] and c.finish() == []


def test_source_table_longest_match() -> None:
    assert pure.source_allowed(ALLOW4, bytes([10, 1, 2, 3]))
    assert not pure.source_allowed(ALLOW4, bytes([10, 0, 0, 99]))
    assert not pure.source_allowed(ALLOW4, bytes([11, 0, 0, 1]))
    assert pure.source_allowed(ALLOW6, bytes([0xFD, 1] + [0] * 14))


def test_load_honours_wiretun_pure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WIRETUN_PURE", "1")
    assert datapath.load() is datapath.PURE
    monkeypatch.setenv("WIRETUN_PURE", "0")
    assert datapath.load() is datapath.NATIVE
    assert datapath.load().seal is native.seal
    assert datapath.load(pure_python=True) is datapath.PURE


@given(
    steps=st.lists(
        st.one_of(st.integers(0, 20000), st.integers(2**64 - 2**13 - 3, 2**64 - 1)), max_size=60
    )
)
@settings(max_examples=200, deadline=None)
def test_native_replay_window_is_the_cores(steps: list[int]) -> None:
    """Counters in any order (jumps past the ring, the reject limit): the native window
    accepts exactly what the core's ReplayWindow accepts."""
    window = ReplayWindow()
    ring, nxt = bytearray(8192), 0
    c = native.Coalescer()
    for counter in steps:
        buf = message(5, counter, b"")
        r = native.open_run(buf, 0, len(buf), KEY, 5, ring, nxt, b"", b"", c)
        nxt = r[1]
        assert (r[2] == 1) == window.check_and_mark(counter)
        assert nxt - 1 == window.last and ring == window.ring


def test_integer_arguments_are_range_checked_alike() -> None:
    f = Flow()
    frame = super_frame(f, segments(f, bytes(3000), 1000), 1000)
    ring = bytearray(8192)
    for backend in (native, pure):
        # The last counter of a 64-bit space may be used; one more may not.
        assert backend.seal([frame], KEY, 1, 2**64 - 3, 1420, MAX4, True)[2] == 3
        for receiver, counter in ((2**32, 0), (-1, 0), (0, -1), (0, 2**64 - 2)):
            with pytest.raises(ValueError, match="out of range"):
                backend.seal([frame], KEY, receiver, counter, 1420, MAX4, True)
        c = backend.Coalescer()
        for receiver, nxt in ((2**32, 0), (0, -1), (0, 2**64)):
            with pytest.raises(ValueError, match="out of range"):
                backend.open_run(b"", 0, 100, KEY, receiver, ring, nxt, b"", b"", c)


def test_empty_packet_into_a_fresh_coalescer() -> None:
    """UBSan found memcpy into a NULL arena for a first packet of 0 bytes."""
    for vnet in (True, False):
        c = native.Coalescer(vnet=vnet)
        c.add(b"")
        p = pure.Coalescer(vnet=vnet)
        p.add(b"")
        assert c.finish() == p.finish()


def test_the_native_path_never_imports_numpy() -> None:
    """What `wiretun up` imports and runs on the native path, its per-packet split of the
    frames its core sends the slow way included, loads no numpy: it is the `pure` extra's
    (~18 MB of RSS, ~60 ms of start). (Only after the kernel refused a GSO write does the
    frame codec split every frame in Python, with numpy if it is there.)"""
    code = """
import sys
import wiretun.tunnel.up, wiretun.tunnel.tunnel, wiretun.tun.offload
from wiretun import datapath
from test_tun_offload import Flow, data_of, segments, super_frame
assert datapath.load() is datapath.NATIVE
f = Flow()
segs = segments(f, data_of(20000), 1000)
frame = super_frame(f, segs, 1000)
packets, dropped = datapath.NATIVE.split_frames([frame])
assert packets == segs and not dropped, dropped
print("numpy" in sys.modules)
"""
    tests = os.path.dirname(__file__)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    env.pop("WIRETUN_PURE", None)
    argv = [sys.executable, "-c", code]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
