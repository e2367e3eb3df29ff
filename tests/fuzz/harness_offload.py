"""The virtio_net_hdr codec: GSO split of arbitrary and mutated frames, and GRO coalesce of
mutated packet batches checked by splitting the result back.

Inputs reach the sizes the TUN really hands over: super-packets up to 64 KB (down to the
48-byte minimum MSS, past the old 256-segment limit; IPv6 with extension headers; forged
csum_start), mutated mostly in their headers so they keep their size; coalesce batches up
to 64 KB, with `verify=False` as `wiretun up` runs it (the packets passed the AEAD) as well
as verifying checksums."""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

from fuzz.mutate import HEADER_MUTATORS
from fuzz.runner import Harness
from wiretun.packet import (
    PROTO_TCP,
    PROTO_UDP,
    internet_checksum,
    ones_complement_sum,
    pseudo_header_sum,
)
from wiretun.tun.gro import coalesce
from wiretun.tun.gso import (
    F_NEEDS_CSUM,
    GSO_NONE,
    MAX_SEGMENTS,
    MAX_SPLIT_BYTES,
    VNET_HDR,
    VNET_HDR_LEN,
    ZERO_VNET_HDR,
    OffloadStats,
    decode_frame,
    ipv6_l4_offset,
)

_V4_SRC, _V4_DST = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
_V6_SRC, _V6_DST = bytes(15) + b"\x01", bytes(15) + b"\x02"
TCP_ACK, TCP_PSH = 0x10, 0x08


def _with_l4_checksum(pkt: bytearray, iph: int, proto: int, at: int) -> bytes:
    l4len = len(pkt) - iph
    pkt[at : at + 2] = b"\x00\x00"
    csum = internet_checksum(pkt[iph:], pseudo_header_sum(pkt, proto, l4len))
    if proto == PROTO_UDP and csum == 0:
        csum = 0xFFFF
    struct.pack_into("!H", pkt, at, csum)
    return bytes(pkt)


def ip_header(v6: bool, proto: int, l4len: int, ip_id: int = 0) -> bytearray:
    if v6:
        return bytearray(struct.pack("!IHBB16s16s", 6 << 28, l4len, proto, 64, _V6_SRC, _V6_DST))
    hdr = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + l4len, ip_id, 0x4000, 64, proto, 0, _V4_SRC, _V4_DST
        )
    )
    struct.pack_into("!H", hdr, 10, internet_checksum(hdr))
    return hdr


def tcp_packet(v6: bool, seq: int, payload: bytes, flags: int = TCP_ACK, ip_id: int = 0) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 77, 5 << 4, flags, 512, 0, 0)
    pkt = ip_header(v6, PROTO_TCP, len(tcp) + len(payload), ip_id) + tcp + payload
    iph = 40 if v6 else 20
    return _with_l4_checksum(pkt, iph, PROTO_TCP, iph + 16)


def udp_packet(v6: bool, payload: bytes, ip_id: int = 0) -> bytes:
    udp = struct.pack("!HHHH", 40000, 5201, 8 + len(payload), 0)
    pkt = ip_header(v6, PROTO_UDP, 8 + len(payload), ip_id) + udp + payload
    iph = 40 if v6 else 20
    return _with_l4_checksum(pkt, iph, PROTO_UDP, iph + 6)


def flows() -> list[tuple[bool, list[bytes]]]:
    """Batches (udp offload on?, packets) that coalesce: TCP and UDP, v4 and v6."""
    out: list[tuple[bool, list[bytes]]] = []
    for v6 in (False, True):
        segs = [tcp_packet(v6, 1000 + 100 * i, bytes([i]) * 100, ip_id=i) for i in range(4)]
        segs.append(tcp_packet(v6, 1400, b"end", TCP_ACK | TCP_PSH, ip_id=4))
        out.append((False, segs))
        out.append((True, [udp_packet(v6, bytes([i]) * 60, ip_id=i) for i in range(3)]))
    # Two interleaved flows, one too short to merge.
    mixed = [tcp_packet(False, 1, b"a" * 50, ip_id=1), udp_packet(False, b"x", ip_id=9)]
    mixed += [tcp_packet(False, 51, b"b" * 50, ip_id=2), tcp_packet(False, 101, b"c" * 7, ip_id=3)]
    out.append((True, mixed))
    return out


def big_flows() -> list[tuple[bool, list[bytes]]]:
    """Batches of about 64 KB: a TCP flow at MSS 1448 and 48, UDP at 64 datagrams."""
    out: list[tuple[bool, list[bytes]]] = []
    for v6 in (False, True):
        out.append((False, [tcp_packet(v6, 1 + 1448 * i, bytes([i]) * 1448, ip_id=i)
                            for i in range(45)]))  # fmt: skip
        out.append((False, [tcp_packet(v6, 1 + 48 * i, bytes([i & 0xFF]) * 48, ip_id=i)
                            for i in range(600)]))  # fmt: skip
        out.append((True, [udp_packet(v6, bytes([i]) * 1000, ip_id=i) for i in range(64)]))
    return out


def encode_batch(udp: bool, packets: Sequence[bytes], *, verify: bool = True) -> bytes:
    """GRO harness input: a flags byte (bit 0: UDP offload, bit 1: no checksum verification,
    as `up` coalesces), then each packet behind a big-endian u16 length."""
    flags = int(udp) | (0 if verify else 2)
    return bytes([flags]) + b"".join(struct.pack("!H", len(p)) + p for p in packets)


def decode_batch(data: bytes) -> tuple[bool, list[bytes]]:
    return decode_batch_flags(data)[:2]


def decode_batch_flags(data: bytes) -> tuple[bool, list[bytes], bool]:
    """(udp, packets, verify)."""
    if not data:
        return False, [], True
    packets: list[bytes] = []
    at = 1
    while at + 2 <= len(data):
        (n,) = struct.unpack_from("!H", data, at)
        packets.append(data[at + 2 : at + 2 + n])
        at += 2 + n
    return bool(data[0] & 1), packets, not data[0] & 2


def _with_ipv6_ext(frame: bytes, ext_lens: Sequence[int]) -> bytes:
    """A vnet frame of IPv6 with destination-options headers before its L4 header."""
    pkt = bytearray(frame[VNET_HDR_LEN:])
    chain = b""
    nh = pkt[6]
    for n in reversed(ext_lens):
        chain = bytes([nh, n // 8 - 1]) + bytes(n - 2) + chain
        nh = 60
    pkt[6] = nh
    struct.pack_into("!H", pkt, 4, int.from_bytes(pkt[4:6], "big") + len(chain))
    fl, gt, hl, gs, cs, co = VNET_HDR.unpack_from(frame)
    head = VNET_HDR.pack(fl, gt, hl + len(chain), gs, cs + len(chain), co)
    return head + bytes(pkt[:40]) + chain + bytes(pkt[40:])


def super_frames() -> list[bytes]:
    """Super-packets as the TUN reads them, up to 64 KB, and the hostile variants #15 found."""
    out: list[bytes] = []
    for v6 in (False, True):
        iph = 40 if v6 else 20
        for mss in (48, 240, 536, 1448):
            n = (65535 - iph - 20) // mss
            segs = [tcp_packet(v6, 1 + mss * i, bytes([i & 0xFF]) * mss, ip_id=i)
                    for i in range(n)]  # fmt: skip
            out += coalesce(segs, OffloadStats(), udp=False, verify=False)
        udp = [udp_packet(v6, bytes([i]) * 1000, ip_id=i) for i in range(64)]
        out += coalesce(udp, OffloadStats(), udp=True, verify=False)
    v6_frame = next(f for f in out if f[1] == 4 and VNET_HDR.unpack_from(f)[3] == 536)
    out.append(_with_ipv6_ext(v6_frame[: VNET_HDR_LEN + 40 + 20 + 536 * 20], [8, 16]))
    forged = bytearray(next(f for f in out if f[1] == 4 and VNET_HDR.unpack_from(f)[3] == 48))
    struct.pack_into("=H", forged, 6, 4000)  # csum_start far beyond the IPv6 header
    out.append(bytes(forged))
    return [f for f in out if f[1] != GSO_NONE]


def _segment_checksums_ok(seg: bytes, iph: int, udp: bool) -> bool:
    if seg[0] >> 4 == 4 and ones_complement_sum(seg[:iph]) != 0xFFFF:
        return False
    proto = PROTO_UDP if udp else PROTO_TCP
    return ones_complement_sum(seg[iph:], pseudo_header_sum(seg, proto, len(seg) - iph)) == 0xFFFF


class SplitHarness(Harness):
    """decode_frame: a frame read from the TUN, header and packet both untrusted."""

    name = "offload_split"
    mutators = HEADER_MUTATORS

    def seeds(self) -> list[bytes]:
        out: list[bytes] = []
        for udp, packets in flows():
            out += coalesce(packets, OffloadStats(), udp=udp)
        pkt = tcp_packet(False, 5, b"partial")
        partial = bytearray(pkt)
        struct.pack_into("!H", partial, 36, pseudo_header_sum(pkt, PROTO_TCP, len(pkt) - 20))
        out.append(VNET_HDR.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 16) + bytes(partial))
        out.append(ZERO_VNET_HDR + udp_packet(True, b"plain"))
        return out + super_frames()

    def check(self, data: bytes) -> None:
        stats = OffloadStats()
        segments = decode_frame(data, stats)
        dropped = sum(stats.dropped.values())
        if not segments:
            assert dropped == 1, f"empty result counted as {dict(stats.dropped)}"
            return
        assert dropped == 0 and stats.segments_out == len(segments)
        assert len(segments) <= MAX_SEGMENTS and sum(map(len, segments)) <= MAX_SPLIT_BYTES
        if len(data) <= VNET_HDR_LEN or data[1] == GSO_NONE:
            return
        # A split super-packet: every segment must be a well-formed packet on its own.
        _flags, gso_type, _hl, gso_size, iph, _off = VNET_HDR.unpack_from(data)
        udp = gso_type == 5
        for seg in segments:
            if seg[0] >> 4 == 4:
                assert int.from_bytes(seg[2:4], "big") == len(seg)
            else:
                assert 40 + int.from_bytes(seg[4:6], "big") == len(seg)
            if udp:
                assert int.from_bytes(seg[iph + 4 : iph + 6], "big") == len(seg) - iph
            if seg[0] >> 4 == 6:  # csum_start must be where the extension headers end
                assert ipv6_l4_offset(seg) == (iph, PROTO_UDP if udp else PROTO_TCP)
            assert _segment_checksums_ok(seg, iph, udp), f"bad checksum in {seg.hex()[:200]}"
        pkt = data[VNET_HDR_LEN:]
        hl = iph + (8 if udp else (pkt[iph + 12] >> 4) * 4)
        assert all(len(seg) <= hl + gso_size for seg in segments), "a segment over gso_size"
        payload = b"".join(seg[hl:] for seg in segments)
        assert payload == pkt[hl:], "segments do not rebuild the payload"


class CoalesceHarness(Harness):
    """coalesce on a batch of packets from the tunnel (decrypted, so attacker-shaped), checked
    by splitting every frame back: same packets, same lengths, same payload bytes."""

    name = "offload_coalesce"

    def seeds(self) -> list[bytes]:
        out = [encode_batch(udp, packets) for udp, packets in flows()]
        out += [encode_batch(udp, packets, verify=False) for udp, packets in flows()]
        return out + [encode_batch(udp, p, verify=False) for udp, p in big_flows()]

    def generate(self, rng: random.Random, pool: Sequence[bytes]) -> bytes:
        if rng.random() < 0.5 and pool:
            # Mutate one packet of a batch and keep the framing, to reach the merge rules.
            udp, packets, verify = decode_batch_flags(rng.choice(pool))
            if packets:
                i = rng.randrange(len(packets))
                packets[i] = super().generate(rng, packets)
                return encode_batch(udp, packets, verify=verify and rng.random() < 0.5)
        return super().generate(rng, pool)

    def check(self, data: bytes) -> None:
        udp, packets, verify = decode_batch_flags(data)
        stats = OffloadStats()
        frames = coalesce(packets, stats, udp=udp, verify=verify)
        assert stats.packets_in == len(packets) and stats.frames_out == len(frames)
        assert len(frames) + stats.coalesced == len(packets)
        used = [False] * len(packets)
        last: dict[tuple[int, bytes] | None, int] = {}  # flow -> batch index of its last packet
        for frame in frames:
            split_stats = OffloadStats()
            segments = decode_frame(frame, split_stats)
            if frame[1] != GSO_NONE:
                assert segments, f"our own GSO frame was refused: {dict(split_stats.dropped)}"
            elif len(frame) == VNET_HDR_LEN:
                segments = [b""]  # an empty packet passes through as a bare header
            for seg in segments:
                # Each segment is a packet of the batch, and a flow's packets keep their order.
                flow = _flow(seg)
                start = last.get(flow, -1) + 1 if flow is not None else 0
                k = next(
                    (
                        k
                        for k in range(start, len(packets))
                        if not used[k] and _same(packets[k], seg)
                    ),
                    -1,
                )
                assert k >= 0, f"segment {seg.hex()} matches no packet (or breaks its flow order)"
                used[k] = True
                last[flow] = k
        assert all(used), "packets were lost"


def _same(orig: bytes, seg: bytes) -> bool:
    """Equal, or equal but for the header fields a merge rewrites (IDs, checksums, lengths)."""
    if orig == seg:
        return True
    hl = _header_len(orig)
    return (
        hl is not None
        and len(orig) == len(seg)
        and orig[hl:] == seg[hl:]
        and (orig[12:20] == seg[12:20] if orig[0] >> 4 == 4 else orig[8:40] == seg[8:40])
    )


def _header_len(pkt: bytes) -> int | None:
    """IP + TCP/UDP header length of a packet the coalescer could have merged, else None."""
    flow = _flow(pkt)
    if flow is None:
        return None
    iph = 20 if pkt[0] >> 4 == 4 else 40
    return iph + ((pkt[iph + 12] >> 4) * 4 if flow[0] == PROTO_TCP else 8)


def _flow(pkt: bytes) -> tuple[int, bytes] | None:
    """The coalescer's flow identity (protocol, addresses, ports) of a TCP/UDP packet whose IP
    header is sane (no fragment, length right); None for the rest, which it never merges."""
    n = len(pkt)
    if n >= 28 and pkt[0] == 0x45 and not (pkt[6] & 0x3F or pkt[7]):
        if int.from_bytes(pkt[2:4], "big") != n:
            return None
        proto, iph, key = pkt[9], 20, pkt[12:24]
    elif n >= 48 and pkt[0] >> 4 == 6 and int.from_bytes(pkt[4:6], "big") == n - 40:
        proto, iph, key = pkt[6], 40, pkt[8:44]
    else:
        return None
    if proto == PROTO_UDP or (proto == PROTO_TCP and n >= iph + 20):
        return proto, key
    return None
