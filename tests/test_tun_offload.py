"""TUN offload codec: GSO split, GRO coalesce, vectors, garbage and the EINVAL fallback."""

from __future__ import annotations

import errno
import logging
import struct
import sys
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wiretun.tun.codec import OffloadFeatures
from wiretun.tun.gso import decode_frame, have_numpy
from wiretun.tun.offload import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    MAX_SEGMENTS,
    MAX_SPLIT_BYTES,
    VNET_HDR,
    ZERO_VNET_HDR,
    FrameCodec,
    OffloadCodec,
    OffloadStats,
    coalesce,
    make_codec,
    split,
    split_many,
)

ACK, PSH, FIN, SYN = 0x10, 0x08, 0x01, 0x02
SRC4, DST4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
SRC6 = bytes.fromhex("fd000000000000000000000000000001")
DST6 = bytes.fromhex("fd000000000000000000000000000002")


# --- an independent, deliberately slow reference: one 16-bit word at a time ---


def ref_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ref_csum(data: bytes) -> int:
    return ~ref_sum(data) & 0xFFFF


def pseudo(pkt: bytes, proto: int, l4len: int) -> bytes:
    addrs = pkt[12:20] if pkt[0] >> 4 == 4 else pkt[8:40]
    return addrs + struct.pack("!HH", proto, l4len)


def l4_ok(pkt: bytes) -> bool:
    """The packet's TCP/UDP checksum verifies (reference arithmetic)."""
    v4 = pkt[0] >> 4 == 4
    iph = (pkt[0] & 15) * 4 if v4 else 40
    proto = pkt[9] if v4 else pkt[6]
    return ref_sum(pseudo(pkt, proto, len(pkt) - iph) + pkt[iph:]) == 0xFFFF


def ip_ok(pkt: bytes) -> bool:
    if pkt[0] >> 4 == 6:
        return int.from_bytes(pkt[4:6], "big") == len(pkt) - 40
    iph = (pkt[0] & 15) * 4
    return ref_sum(pkt[:iph]) == 0xFFFF and int.from_bytes(pkt[2:4], "big") == len(pkt)


# --- packet builders (checksums by the reference) ---


@dataclass
class Flow:
    v6: bool = False
    tcp: bool = True
    sport: int = 40000
    dport: int = 5201
    ack: int = 1
    window: int = 3000
    options: bytes = b""
    tos: int = 0
    ttl: int = 64
    df: bool = True
    flow_label: int = 0

    @property
    def iph(self) -> int:
        return 40 if self.v6 else 20

    @property
    def l4h(self) -> int:
        return 20 + len(self.options) if self.tcp else 8


def ip_header(f: Flow, l4len: int, ip_id: int) -> bytes:
    proto = 6 if f.tcp else 17
    if f.v6:
        first = (6 << 28) | (f.tos << 20) | f.flow_label
        return struct.pack("!IHBB", first, l4len, proto, f.ttl) + SRC6 + DST6
    h = bytearray(
        struct.pack(
            "!BBHHHBBH",
            0x45,
            f.tos,
            20 + l4len,
            ip_id,
            0x4000 if f.df else 0,
            f.ttl,
            proto,
            0,
        )
        + SRC4
        + DST4
    )
    struct.pack_into("!H", h, 10, ref_csum(bytes(h)))
    return bytes(h)


def packet(f: Flow, payload: bytes, *, seq: int = 0, flags: int = ACK, ip_id: int = 0) -> bytes:
    """One valid TCP or UDP packet with correct checksums."""
    l4len = f.l4h + len(payload)
    ip = ip_header(f, l4len, ip_id)
    if f.tcp:
        doff = (f.l4h // 4) << 4
        l4 = (
            struct.pack("!HHIIBBHHH", f.sport, f.dport, seq, f.ack, doff, flags, f.window, 0, 0)
            + f.options
            + payload
        )
        at = 16
    else:
        l4 = struct.pack("!HHHH", f.sport, f.dport, l4len, 0) + payload
        at = 6
    csum = ref_csum(pseudo(ip, 6 if f.tcp else 17, l4len) + l4)
    if not f.tcp and csum == 0:
        csum = 0xFFFF
    l4 = l4[:at] + struct.pack("!H", csum) + l4[at + 2 :]
    return ip + l4


def segments(
    f: Flow, data: bytes, gso: int, *, seq: int = 1000, ip_id: int = 7, flags: int = ACK
) -> list[bytes]:
    """What a kernel's GSO makes of `data`: PSH/FIN only on the last, IDs and seqs advancing."""
    out = []
    chunks = [data[i : i + gso] for i in range(0, len(data), gso)]
    for i, chunk in enumerate(chunks):
        fl = flags if i == len(chunks) - 1 else flags & ~(PSH | FIN)
        out.append(
            packet(
                f,
                chunk,
                seq=(seq + i * gso) & 0xFFFFFFFF,
                flags=fl,
                ip_id=(ip_id + i) & 0xFFFF,
            )
        )
    return out


def super_frame(f: Flow, segs: list[bytes], gso: int, *, hdr_len: int | None = None) -> bytes:
    """The frame a kernel hands over for `segs` sent as one GSO packet (CHECKSUM_PARTIAL)."""
    first = segs[0]
    hl = f.iph + f.l4h
    body = b"".join(s[hl:] for s in segs)
    total = hl + len(body)
    h = bytearray(first[:hl])
    if f.v6:
        struct.pack_into("!H", h, 4, total - 40)
    else:
        struct.pack_into("!H", h, 2, total)
        struct.pack_into("!H", h, 10, 0)
        struct.pack_into("!H", h, 10, ref_csum(bytes(h[:20])))
    l4len = total - f.iph
    if f.tcp:
        h[f.iph + 13] |= segs[-1][f.iph + 13] & (PSH | FIN)
        at = f.iph + 16
        gso_type = GSO_TCPV6 if f.v6 else GSO_TCPV4
    else:
        struct.pack_into("!H", h, f.iph + 4, l4len)
        at = f.iph + 6
        gso_type = GSO_UDP_L4
    struct.pack_into("!H", h, at, ref_sum(pseudo(bytes(h), 6 if f.tcp else 17, l4len)))
    vnet = VNET_HDR.pack(
        F_NEEDS_CSUM, gso_type, hl if hdr_len is None else hdr_len, gso, f.iph, at - f.iph
    )
    return vnet + bytes(h) + body


def data_of(n: int, salt: int = 0) -> bytes:
    return bytes((i * 7 + salt) & 0xFF for i in range(n))


# --- vectors: one per gso_type and IP version (the wireguard-go handleVirtioRead table) ---


@pytest.mark.parametrize(
    ("flow", "want_lens"),
    [
        (Flow(), [140, 140]),
        (Flow(v6=True), [160, 160]),
        (Flow(tcp=False), [128, 128]),
        (Flow(v6=True, tcp=False), [148, 148]),
    ],
    ids=["tcp4", "tcp6", "udp4", "udp6"],
)
def test_split_vectors(flow: Flow, want_lens: list[int]) -> None:
    segs = segments(flow, data_of(200), 100, flags=ACK | PSH if flow.tcp else 0)
    frame = super_frame(flow, segs, 100)
    gso_type = frame[1]
    assert gso_type == ((GSO_TCPV6 if flow.v6 else GSO_TCPV4) if flow.tcp else GSO_UDP_L4)
    stats = OffloadStats()
    out = split(frame, stats)
    assert [len(p) for p in out] == want_lens
    assert out == segs
    for p in out:
        assert ip_ok(p) and l4_ok(p)
    if flow.tcp:
        iph = flow.iph
        assert [p[iph + 13] for p in out] == [ACK, ACK | PSH]
        assert [struct.unpack_from("!I", p, iph + 4)[0] for p in out] == [1000, 1100]
    else:
        assert [struct.unpack_from("!H", p, flow.iph + 4)[0] for p in out] == [108, 108]
    if not flow.v6:
        assert [struct.unpack_from("!H", p, 4)[0] for p in out] == [7, 8]
    assert stats.gso_frames_in == 1 and stats.segments_out == 2 and not stats.dropped


def test_split_ignores_hdr_len() -> None:
    """On the forward path hdr_len can cover the whole first segment: it must not matter."""
    f = Flow()
    segs = segments(f, data_of(3000), 1000)
    for bogus in (0, 40 + 1000, 7, 0xFFFF):
        assert split(super_frame(f, segs, 1000, hdr_len=bogus)) == segs


def test_split_single_segment_with_large_gso_size() -> None:
    for f in (Flow(), Flow(v6=True, tcp=False)):
        segs = segments(f, data_of(900), 900)
        frame = bytearray(super_frame(f, segs, 900))
        struct.pack_into("=H", frame, 4, 0xFFF0)  # gso_size far beyond the payload
        assert split(bytes(frame)) == segs


def test_split_fin_psh_only_on_last_and_odd_sizes() -> None:
    f = Flow(options=bytes([1, 1, 8, 10]) + bytes(8))  # NOP NOP timestamp
    segs = segments(f, data_of(4001), 999, flags=ACK | PSH | FIN)
    out = split(super_frame(f, segs, 999))
    assert out == segs
    assert [p[20 + 13] for p in out] == [ACK] * 4 + [ACK | PSH | FIN]
    assert len(out[-1]) == 20 + 32 + 5


def test_split_wraps_seq_and_ip_id() -> None:
    f = Flow()
    segs = segments(f, data_of(5000), 1448, seq=0xFFFFF000, ip_id=0xFFFE)
    out = split(super_frame(f, segs, 1448))
    assert out == segs
    assert struct.unpack_from("!H", out[3], 4)[0] == 1


def test_split_udp_zero_checksum_becomes_ffff() -> None:
    """A UDP segment whose checksum computes to 0 must carry 0xFFFF (0 means none)."""
    f = Flow(tcp=False, v6=True)
    # Search a payload whose second segment's checksum is exactly 0xFFFF-complement.
    for salt in range(0, 70000):
        tail = struct.pack("!H", salt)
        segs = segments(f, data_of(64) + data_of(62) + tail, 64)
        if ref_sum(pseudo(segs[1], 17, len(segs[1]) - 40) + segs[1][40:46] + segs[1][48:]) == (
            0xFFFF
        ):
            break
    else:
        pytest.fail("no zero-checksum payload found")
    out = split(super_frame(f, segs, 64))
    assert struct.unpack_from("!H", out[1], 46)[0] == 0xFFFF
    assert out == segs and l4_ok(out[1])


def test_gso_none_passthrough_and_needs_csum() -> None:
    f = Flow()
    p = packet(f, data_of(333), seq=5, flags=ACK | PSH)
    assert split(ZERO_VNET_HDR + p) == [p]
    # DATA_VALID only says the kernel checked it: the packet passes unchanged.
    assert split(VNET_HDR.pack(F_DATA_VALID, GSO_NONE, 0, 0, 0, 0) + p) == [p]
    # CHECKSUM_PARTIAL: the field holds the pseudo-header sum; we must finish it.
    partial = bytearray(p)
    struct.pack_into("!H", partial, 36, ref_sum(pseudo(p, 6, len(p) - 20)))
    stats = OffloadStats()
    out = split(VNET_HDR.pack(F_NEEDS_CSUM, GSO_NONE, 40, 0, 20, 16) + bytes(partial), stats)
    assert out == [p] and stats.csum_completed == 1
    u = Flow(tcp=False, v6=True)
    q = packet(u, data_of(77))
    partial = bytearray(q)
    struct.pack_into("!H", partial, 46, ref_sum(pseudo(q, 17, len(q) - 40)))
    assert split(VNET_HDR.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, 40, 6) + bytes(partial)) == [q]


@given(
    v6=st.booleans(),
    tcp=st.booleans(),
    size=st.integers(1, 20000),
    gso=st.integers(1, 1500),
    opt_words=st.integers(0, 10),
    seq=st.integers(0, 0xFFFFFFFF),
    ip_id=st.integers(0, 0xFFFF),
    psh=st.booleans(),
    salt=st.integers(0, 255),
)
@settings(max_examples=150, deadline=None)
def test_split_then_coalesce_roundtrip(  # noqa: PLR0917 (hypothesis passes them all)
    v6: bool,
    tcp: bool,
    size: int,
    gso: int,
    opt_words: int,
    seq: int,
    ip_id: int,
    psh: bool,
    salt: int,
) -> None:
    f = Flow(v6=v6, tcp=tcp, options=bytes([1]) * (4 * opt_words) if tcp else b"")
    if -(-size // gso) > (MAX_SEGMENTS if tcp else 64):
        size = gso * (MAX_SEGMENTS if tcp else 64)
    segs = segments(
        f, data_of(size, salt), gso, seq=seq, ip_id=ip_id, flags=ACK | PSH if psh else ACK
    )
    frame = super_frame(f, segs, gso)
    out = split(frame)
    # Every segment checks out with the independent word-loop arithmetic ...
    assert all(ip_ok(p) and l4_ok(p) for p in out)
    assert out == segs
    # ... built one by one (no numpy) as well ...
    assert decode_frame(frame, OffloadStats(), vectorised=False) == segs
    # ... and coalescing them back gives the kernel's frame, byte for byte.
    back = coalesce(out, udp=True)
    if len(segs) == 1:
        assert back == [ZERO_VNET_HDR + segs[0]]
    elif len(frame) - 10 <= 0xFFFF:
        assert back == [frame]
    assert split_many(back) == segs


def with_ipv6_ext(data: bytes, ext_lens: list[int], *, vnet: bool = True) -> bytes:
    """An IPv6 frame (or packet) with destination-options headers of `ext_lens` bytes
    (multiples of 8) between the fixed header and TCP/UDP: payload length and csum_start
    follow; L4 checksums do not cover extension headers, so they stay valid."""
    at = 10 if vnet else 0
    pkt = bytearray(data[at:])
    chain = b""
    nh = pkt[6]
    for n in reversed(ext_lens):
        chain = bytes([nh, n // 8 - 1]) + bytes(n - 2) + chain
        nh = 60
    pkt[6] = nh
    struct.pack_into("!H", pkt, 4, int.from_bytes(pkt[4:6], "big") + len(chain))
    out = bytes(pkt[:40]) + chain + bytes(pkt[40:])
    if not vnet:
        return out
    fl, gt, hl, gs, cs, co = VNET_HDR.unpack_from(data)
    return VNET_HDR.pack(fl, gt, hl + len(chain), gs, cs + len(chain), co) + out


@pytest.mark.parametrize("v6", [False, True])
def test_split_64k_at_a_small_mss(v6: bool) -> None:
    """Regression: at MTU 280 (MSS 240/220) a 64 KB TSO super-packet has ~280 segments; a cap
    of 256 dropped every one of them silently (59k retransmits). Now they split."""
    f = Flow(v6=v6)
    mss = 280 - f.iph - 20
    segs = segments(f, data_of(65535 - f.iph - 20), mss)
    assert len(segs) > 256
    stats = OffloadStats()
    assert split(super_frame(f, segs, mss), stats) == segs
    assert not stats.dropped and stats.gso_frames_in == 1
    # The kernel's smallest MSS (48) is within the cap too.
    tiny = segments(f, data_of(65535 - f.iph - 20), 48)
    assert len(tiny) <= MAX_SEGMENTS and split(super_frame(f, tiny, 48)) == tiny
    assert decode_frame(super_frame(f, tiny, 48), stats, vectorised=False) == tiny


@pytest.mark.parametrize("tcp", [True, False])
def test_split_ipv6_extension_headers(tcp: bool) -> None:
    f = Flow(v6=True, tcp=tcp)
    segs = segments(f, data_of(5000), 1000)
    frame = with_ipv6_ext(super_frame(f, segs, 1000), [8, 16])
    want = [with_ipv6_ext(s, [8, 16], vnet=False) for s in segs]
    out = split(frame)
    assert out == want and all(l4_ok(s) for s in segs)
    assert decode_frame(frame, OffloadStats(), vectorised=False) == want


@pytest.mark.parametrize("csum_start", [44, 48, 1000, 4000, 60000])
def test_split_ipv6_csum_start_is_checked_against_the_header_chain(csum_start: int) -> None:
    """Regression: csum_start was taken as the IPv6 header length whenever it was >= 40 and a
    multiple of 4, so a forged one made every segment carry kilobytes of "header" (one frame
    became 13 MB). It must now be where the extension header chain ends."""
    f = Flow(v6=True)
    frame = bytearray(super_frame(f, segments(f, data_of(65000), 48), 48))
    struct.pack_into("=H", frame, 6, csum_start)
    stats = OffloadStats()
    assert split(bytes(frame), stats) == []
    assert dict(stats.dropped) == {"bad_gso_header": 1}
    # A chain whose end is not csum_start is refused too (with the right start it splits).
    ext = with_ipv6_ext(super_frame(f, segments(f, data_of(3000), 1000), 1000), [8])
    assert len(split(ext)) == 3
    wrong = bytearray(ext)
    struct.pack_into("=H", wrong, 6, 40)
    assert split(bytes(wrong), stats) == [] and stats.dropped["bad_gso_header"] == 2


@given(
    frame=st.binary(min_size=38, max_size=4000),
    gso=st.integers(1, 2000),
    start=st.integers(0, 0xFFFF),
    v6=st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_split_output_is_bounded(frame: bytes, gso: int, start: int, v6: bool) -> None:
    """Whatever the header says, one frame never becomes more than MAX_SPLIT_BYTES."""
    gso_type = GSO_TCPV6 if v6 else GSO_TCPV4
    pkt = bytes([0x60 if v6 else 0x45]) + frame
    frame = VNET_HDR.pack(F_NEEDS_CSUM, gso_type, 0, gso, start, 16) + pkt
    out = split(frame)
    assert sum(map(len, out)) <= MAX_SPLIT_BYTES and len(out) <= MAX_SEGMENTS
    assert decode_frame(frame, OffloadStats(), vectorised=False) == out


# --- coalescing rules ---


def frames_info(frames: list[bytes]) -> list[tuple[int, int, int]]:
    """(gso_type, gso_size, packet length) per frame."""
    return [(fr[1], VNET_HDR.unpack_from(fr)[3], len(fr) - 10) for fr in frames]


def test_coalesce_two_flows_interleaved_keep_order() -> None:
    a, b = Flow(sport=1), Flow(sport=2)
    sa = segments(a, data_of(300), 100)
    sb = segments(b, data_of(300, 9), 100, seq=50000)
    mixed = [sa[0], sb[0], sa[1], sb[1], sa[2], sb[2]]
    stats = OffloadStats()
    out = coalesce(mixed, stats)
    assert frames_info(out) == [(GSO_TCPV4, 100, 340), (GSO_TCPV4, 100, 340)]
    assert split_many(out) == sa + sb
    assert stats.coalesced == 4 and stats.gso_frames_out == 2 and stats.frames_out == 2


def test_coalesce_output_header_fields() -> None:
    f = Flow(v6=True)
    segs = segments(f, data_of(250), 100, flags=ACK | PSH)
    (fr,) = coalesce(segs)
    flags, gso_type, hdr_len, gso_size, start, off = VNET_HDR.unpack_from(fr)
    assert (flags, gso_type, hdr_len, gso_size, start, off) == (
        F_NEEDS_CSUM,
        GSO_TCPV6,
        60,
        100,
        40,
        16,
    )
    pkt = fr[10:]
    assert struct.unpack_from("!H", pkt, 4)[0] == 20 + 250
    assert pkt[40 + 13] == ACK | PSH
    # The L4 field carries the (uncomplemented) pseudo-header sum for CHECKSUM_PARTIAL.
    assert struct.unpack_from("!H", pkt, 56)[0] == ref_sum(pseudo(pkt, 6, 270))


@pytest.mark.parametrize(
    ("name", "mutate", "want_frames"),
    [
        ("ack differs", lambda f: Flow(ack=2), 2),
        ("window differs", lambda f: Flow(window=1), 2),
        ("ttl differs", lambda f: Flow(ttl=1), 2),
        ("tos differs", lambda f: Flow(tos=4), 2),
        ("df differs", lambda f: Flow(df=False), 2),
        ("options differ", lambda f: Flow(options=bytes([1, 1, 1, 0])), 2),
        ("same", lambda f: Flow(), 1),
    ],
)
def test_coalesce_header_mismatch_splits(name: str, mutate: object, want_frames: int) -> None:
    f = Flow(options=bytes([1, 1, 1, 1]) if "options" in name else b"")
    assert callable(mutate)
    g: Flow = mutate(f)
    if "options" not in name:
        g.options = f.options
    p1 = packet(f, data_of(100), seq=0, ip_id=1)
    p2 = packet(g, data_of(100), seq=100, ip_id=2)
    out = coalesce([p1, p2])
    assert len(out) == want_frames, name
    assert split_many(out) == [p1, p2]


def test_coalesce_psh_ends_and_short_ends() -> None:
    f = Flow()
    p = [
        packet(f, data_of(100), seq=0, ip_id=1, flags=ACK | PSH),
        packet(f, data_of(100), seq=100, ip_id=2),
        packet(f, data_of(50), seq=200, ip_id=3),
        packet(f, data_of(50), seq=250, ip_id=4),
    ]
    assert frames_info(coalesce(p)) == [
        (GSO_NONE, 0, 140),
        (GSO_TCPV4, 100, 190),
        (GSO_NONE, 0, 90),
    ]


def test_coalesce_larger_after_smaller_and_gaps() -> None:
    f = Flow()
    p = [
        packet(f, data_of(50), seq=0, ip_id=1),
        packet(f, data_of(100), seq=50, ip_id=2),  # larger than the first: new item
        packet(f, data_of(100), seq=250, ip_id=3),  # sequence gap: new item
        packet(f, data_of(100), seq=350, ip_id=4),
    ]
    assert [i[0] for i in frames_info(coalesce(p))] == [GSO_NONE, GSO_NONE, GSO_TCPV4]


def test_coalesce_rejects_bad_checksum_and_non_candidates() -> None:
    f = Flow()
    good = segments(f, data_of(300), 100)
    bad = bytearray(good[1])
    bad[-1] ^= 0xFF
    out = coalesce([good[0], bytes(bad), good[2]])
    assert [i[0] for i in frames_info(out)] == [GSO_NONE, GSO_NONE, GSO_NONE]
    assert out[1][10:] == bytes(bad)  # passed through for the kernel to drop
    # A pure ACK, a SYN and a packet with IP options are never merged; the pure ACK also
    # ends the flow's item so nothing is reordered across it.
    pure_ack = packet(f, b"", seq=100, ip_id=8)
    out = coalesce([good[0], pure_ack, good[1], good[2]])
    assert [i[0] for i in frames_info(out)] == [GSO_NONE, GSO_NONE, GSO_TCPV4]
    syn = packet(f, data_of(100), seq=100, flags=SYN, ip_id=8)
    assert len(coalesce([good[0], syn])) == 2


def test_coalesce_ip_id_rules() -> None:
    f = Flow()
    a = packet(f, data_of(100), seq=0, ip_id=5)
    assert len(coalesce([a, packet(f, data_of(100), seq=100, ip_id=9)])) == 2
    # With DF a fixed ID is allowed (atomic datagrams), as in the kernel.
    assert len(coalesce([a, packet(f, data_of(100), seq=100, ip_id=5)])) == 1
    g = Flow(df=False)
    b = packet(g, data_of(100), seq=0, ip_id=5)
    assert len(coalesce([b, packet(g, data_of(100), seq=100, ip_id=5)])) == 2


def test_coalesce_udp_only_when_enabled_and_limits() -> None:
    f = Flow(tcp=False)
    segs = [packet(f, data_of(100, i), ip_id=i) for i in range(70)]
    assert len(coalesce(segs)) == 70
    out = coalesce(segs, udp=True)
    assert frames_info(out) == [(GSO_UDP_L4, 100, 28 + 6400), (GSO_UDP_L4, 100, 28 + 600)]
    assert split_many(out) == segs
    # A zero (absent) UDP checksum cannot be verified: such packets pass through.
    raw = bytearray(segs[1])
    raw[26:28] = b"\x00\x00"
    assert len(coalesce([segs[0], bytes(raw), segs[2]], udp=True)) == 3


def test_coalesce_respects_64k() -> None:
    f = Flow()
    segs = segments(f, data_of(100 * 1400), 1400)
    out = coalesce(segs)
    assert all(len(fr) - 10 <= 0xFFFF for fr in out)
    assert len(out) == 3  # 46 + 46 + 8 segments of 1440 bytes
    assert split_many(out) == segs


def test_coalesce_passes_garbage_through() -> None:
    junk = [b"", b"\x45", bytes(30), b"\x60" + bytes(60), bytes([0x45]) + bytes(100)]
    out = coalesce(junk)
    assert out == [ZERO_VNET_HDR + j for j in junk]


# --- garbage from the kernel is dropped and counted, never raised ---


def test_split_garbage_is_counted() -> None:
    f = Flow()
    good = super_frame(f, segments(f, data_of(300), 100), 100)
    many = super_frame(f, segments(f, data_of(4000), 2), 2)
    too_many = many[:4] + struct.pack("=H", 1) + many[6:]  # 4000 one-byte segments
    v6 = Flow(v6=True)
    big_headers = with_ipv6_ext(super_frame(v6, segments(v6, data_of(20000), 48), 48), [2040] * 3)
    cases = {
        "short_frame": b"\x00" * 5,
        "bad_gso_type": good[:1] + b"\x03" + good[2:],
        "bad_gso_version": good[:1] + bytes([GSO_TCPV6]) + good[2:],
        "bad_gso": good[:4] + b"\x00\x00" + good[6:],
        "bad_gso_header": good[:8] + b"\x18\x00" + good[10:],
        "too_many_segments": too_many,
        "split_too_large": big_headers,
        "bad_csum_offset": VNET_HDR.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 4000) + good[10:],
    }
    stats = OffloadStats()
    for reason, frame in cases.items():
        assert split(frame, stats) == [], reason
        assert stats.dropped[reason] >= 1, reason
    assert sum(stats.dropped.values()) == len(cases)


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_split_never_raises(frame: bytes) -> None:
    stats = OffloadStats()
    out = split(frame, stats)
    assert isinstance(out, list)
    assert len(out) or sum(stats.dropped.values()) == 1


@given(st.lists(st.binary(min_size=0, max_size=120), max_size=8))
@settings(max_examples=200, deadline=None)
def test_coalesce_never_raises(packets: list[bytes]) -> None:
    out = coalesce(packets, udp=True)
    assert sum(1 for _ in out) <= len(packets)


# --- the codec hook and the EINVAL fallback ---


def test_codec_einval_fallback() -> None:
    f = Flow()
    segs = segments(f, data_of(3000), 1000)
    codec = OffloadCodec()
    written: list[bytes] = []

    def refuse_gso(fd: int, frame: bytes) -> int:
        assert fd == 99
        if frame[1] != GSO_NONE:
            raise OSError(errno.EINVAL, "Invalid argument")
        written.append(frame)
        return len(frame)

    assert codec.write(99, segs, refuse_gso) == 3
    assert written == [ZERO_VNET_HDR + s for s in segs]
    assert codec.stats.gso_write_rejected == 1 and codec.stats.fallback_packets == 3
    assert not codec.gso_writes
    # From now on nothing is coalesced, and nothing more is refused.
    written.clear()
    assert codec.write(99, segs, refuse_gso) == 3
    assert written == [ZERO_VNET_HDR + s for s in segs]
    assert codec.stats.gso_write_rejected == 1


def test_frame_codec_passes_frames_and_splits_after_a_refusal() -> None:
    """A frames codec (the native data path's TUN) hands frames through both ways; after the
    kernel refuses a GSO write it writes plain frames, for good, as OffloadCodec does."""
    f = Flow()
    segs = segments(f, data_of(3000), 1000)
    frame = super_frame(f, segs, 1000)
    codec = FrameCodec()
    assert codec.packet_offset == 10
    assert codec.decode(frame) == [frame]
    assert codec.decode(bytearray(frame)) == [frame]
    merged = coalesce(segs)
    assert codec.encode(merged) == merged
    written: list[bytes] = []

    def refuse_gso(fd: int, frame: bytes) -> int:
        if frame[1] != GSO_NONE:
            raise OSError(errno.EINVAL, "Invalid argument")
        written.append(frame)
        return len(frame)

    assert codec.write(7, merged, refuse_gso) == 3
    assert written == [ZERO_VNET_HDR + s for s in segs] and not codec.gso_writes
    plain = ZERO_VNET_HDR + segs[0]
    assert codec.encode([*merged, plain]) == [*(ZERO_VNET_HDR + s for s in segs), plain]


def test_make_codec_frames_feature() -> None:
    @dataclass(frozen=True)
    class Features:
        uso: bool
        frames: bool

    assert type(make_codec(Features(uso=True, frames=True))) is FrameCodec
    assert type(make_codec(Features(uso=True, frames=False))) is OffloadCodec
    assert make_codec(Features(uso=True, frames=True)).udp


def test_codec_other_errors_are_not_ours() -> None:
    codec = OffloadCodec()
    f = Flow()
    frame = coalesce(segments(f, data_of(300), 100))[0]
    assert codec.write_failed(frame, OSError(errno.EIO, "io")) is None
    assert codec.write_failed(ZERO_VNET_HDR + bytes(40), OSError(errno.EINVAL, "x")) is None
    assert codec.gso_writes

    def fail(fd: int, frame: bytes) -> int:
        raise OSError(errno.EIO, "io")

    with pytest.raises(OSError, match="io"):
        codec.write(3, segments(f, data_of(300), 100), fail)


def test_make_codec_features() -> None:
    @dataclass(frozen=True)
    class Features:
        uso: bool

    udp = [packet(Flow(tcp=False), data_of(50, i), ip_id=i) for i in range(3)]
    assert len(make_codec(Features(uso=True)).encode(udp)) == 1
    codec = make_codec(Features(uso=False))
    assert len(codec.encode(udp)) == 3
    big = super_frame(Flow(), segments(Flow(), data_of(3000), 1000), 1000)
    assert len(codec.decode(big)) == 3
    assert codec.stats.gso_frames_in == 1


def test_unverified_codec_merges_what_the_verifying_one_splits() -> None:
    # The tunnel's codec trusts checksums of AEAD-authenticated packets; the default does not.
    f = Flow()
    good = segments(f, data_of(300), 100)
    bad = bytearray(good[1])
    bad[-1] ^= 0xFF  # payload changed, checksum not
    batch = [good[0], bytes(bad), good[2]]
    assert len(coalesce(batch)) == 3
    assert len(coalesce(batch, verify=False)) == 1
    assert len(make_codec(OffloadFeatures(uso=True, verify_checksums=False)).encode(batch)) == 1
    assert len(make_codec(OffloadFeatures(uso=True)).encode(batch)) == 3


# --- the vectorised coalesce path must give exactly what the per-packet loop gives ---

_TWEAKS = ("plain", "psh", "short", "gap", "same_id", "id_plus2", "window", "ttl", "flow_b",
           "option", "no_df", "fin", "big")  # fmt: skip


@given(
    n=st.integers(2, 140),
    changes=st.lists(st.tuples(st.integers(0, 139), st.sampled_from(_TWEAKS)), max_size=6),
    size=st.sampled_from([100, 536, 1368]),
    options=st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(8)]),
    verify=st.booleans(),
)
@settings(max_examples=400, deadline=None)
def test_vectorised_coalesce_equals_the_loop(
    n: int, changes: list[tuple[int, str]], size: int, options: bytes, verify: bool
) -> None:
    """Mostly plain segments of one flow with a few departures (so the vectorised path is
    taken often): its frames equal the per-packet loop's, bit for bit, and the numpy checksum
    pass agrees with the per-packet one."""
    from wiretun.tun.gro import _coalesce_loop, _coalesce_tcp4, _frames
    from wiretun.tun.gro import coalesce as gro_coalesce

    tweaks = ["plain"] * n
    for at, tweak in changes:
        if at < n:
            tweaks[at] = tweak

    a = Flow(options=options)
    b = Flow(options=options, sport=40001)
    seq = {a.sport: 1000, b.sport: 5000}
    ip_id = {a.sport: 7, b.sport: 70}
    packets: list[bytes] = []
    for t in tweaks:
        f = b if t == "flow_b" else a
        if t == "window":
            f = Flow(options=options, window=a.window + 1)
        elif t == "ttl":
            f = Flow(options=options, ttl=63)
        elif t == "option":
            f = Flow(options=b"\x01\x01\x08\x0a" + bytes(7) + b"\x01" if options else b"")
        elif t == "no_df":
            f = Flow(options=options, df=False)
        n = size // 2 if t == "short" else size
        if t == "big":
            n = size + 16
        if t == "gap":
            seq[f.sport] += 1
        if t == "id_plus2":
            ip_id[f.sport] += 1
        flags = ACK | PSH if t == "psh" else (ACK | 0x01 if t == "fin" else ACK)
        packets.append(packet(f, bytes([len(packets) & 0xFF]) * n, seq=seq[f.sport],
                              flags=flags, ip_id=ip_id[f.sport]))  # fmt: skip
        seq[f.sport] = (seq[f.sport] + n) & 0xFFFFFFFF
        if t != "same_id":
            ip_id[f.sport] = (ip_id[f.sport] + 1) & 0xFFFF
    # The loop with the per-packet checksum check: what runs without numpy.
    want = _frames(_coalesce_loop(packets, False), OffloadStats(), verify, vectorised=False)
    assert _frames(_coalesce_loop(packets, False), OffloadStats(), verify, vectorised=True) == want
    fast = _coalesce_tcp4(packets)
    if fast is not None:
        assert _frames(fast, OffloadStats(), verify, vectorised=True) == want
    assert coalesce(packets, OffloadStats(), verify=verify) == want
    assert gro_coalesce(packets, OffloadStats(), verify=verify, vectorised=False) == want
    if set(tweaks) <= {"plain", "psh", "short", "gap", "window", "ttl", "option", "big"}:
        assert fast is not None  # one flow, all candidates: the vectorised path decided


def test_without_numpy_the_codec_gives_the_same_frames(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """numpy is the `pure` extra: without it the offload codec splits and coalesces (and
    verifies checksums) packet by packet, to the same bytes, and says so once."""
    f = Flow()
    segs = segments(f, data_of(40000), 1448)  # 28 segments: split vectorised with numpy
    frame = super_frame(f, segs, 1448)
    many = segs + segments(Flow(sport=41000), data_of(60000), 1448)  # >= VECTOR_MIN_BATCH

    def run() -> tuple[list[bytes], list[bytes]]:
        codec = make_codec(OffloadFeatures(uso=False))
        return codec.decode(frame), codec.encode(many)

    with_numpy = run()
    have_numpy.cache_clear()
    monkeypatch.setitem(sys.modules, "numpy", None)  # `import numpy` raises ImportError
    try:
        with caplog.at_level(logging.INFO, logger="wiretun.tun.gso"):
            assert run() == with_numpy
            assert run() == with_numpy
        assert not have_numpy()
        assert caplog.text.count("numpy is not installed") == 1
    finally:
        have_numpy.cache_clear()
    assert with_numpy[0] == segs and len(with_numpy[1]) == 2  # one frame per flow
