"""TUN offload codec: IFF_VNET_HDR frames to IP packets (GSO split) and back (GRO coalesce)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from wiretun.tun.gro import MAX_COALESCED_LEN, UDP_MAX_SEGMENTS
from wiretun.tun.gro import coalesce as _coalesce
from wiretun.tun.gso import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    MAX_SEGMENTS,
    MAX_SPLIT_BYTES,
    VNET_HDR,
    VNET_HDR_LEN,
    ZERO_VNET_HDR,
    OffloadStats,
    decode_frame,
    decode_frames,
)

__all__ = [
    "F_DATA_VALID",
    "F_NEEDS_CSUM",
    "GSO_NONE",
    "GSO_TCPV4",
    "GSO_TCPV6",
    "GSO_UDP_L4",
    "MAX_COALESCED_LEN",
    "MAX_SEGMENTS",
    "MAX_SPLIT_BYTES",
    "STATS",
    "UDP_MAX_SEGMENTS",
    "VNET_HDR",
    "VNET_HDR_LEN",
    "ZERO_VNET_HDR",
    "FrameCodec",
    "OffloadCodec",
    "OffloadStats",
    "coalesce",
    "make_codec",
    "split",
    "split_many",
    "vnet_header",
]

# Counts for callers of the plain functions that pass no stats object: never count nowhere.
STATS = OffloadStats()


def split(frame: bytes | bytearray | memoryview, stats: OffloadStats | None = None) -> list[bytes]:
    """The IP packets in one frame read from an IFF_VNET_HDR fd (a GSO frame gives segments)."""
    return decode_frame(frame, STATS if stats is None else stats)


def split_many(
    frames: Iterable[bytes | bytearray | memoryview], stats: OffloadStats | None = None
) -> list[bytes]:
    """`split` over a batch of frames, in order."""
    return decode_frames(frames, STATS if stats is None else stats)


def coalesce(
    packets: Sequence[bytes],
    stats: OffloadStats | None = None,
    *,
    udp: bool = False,
    verify: bool = True,
) -> list[bytes]:
    """Frames to write to an IFF_VNET_HDR fd, merging segments the way the kernel's GRO would
    (`verify=False`: trust the packets' checksums, see wiretun.tun.gro.coalesce)."""
    return _coalesce(packets, STATS if stats is None else stats, udp=udp, verify=verify)


class OffloadCodec:
    """The codec of one TUN queue: `decode` per frame read, `encode` per writer batch.

    `udp` says whether the kernel accepted USO (UDP super-packets may then be written).
    After the kernel refuses a GSO write (EINVAL), `encode` writes every packet plainly for
    the rest of this codec's life (the queue's, i.e. the process's for that device): a kernel
    that refuses once will refuse again. TUNSETOFFLOAD itself is wiretun.tun.device's job.
    """

    def __init__(self, *, udp: bool = False, verify: bool = True) -> None:
        self.udp = udp
        self.verify = verify
        self.gso_writes = True
        self.stats = OffloadStats()

    def decode(self, frame: bytes | bytearray | memoryview) -> list[bytes]:
        return decode_frame(frame, self.stats)

    def encode(self, packets: Sequence[bytes]) -> list[bytes]:
        if self.gso_writes:
            return _coalesce(packets, self.stats, udp=self.udp, verify=self.verify)
        self.stats.packets_in += len(packets)
        self.stats.frames_out += len(packets)
        return [ZERO_VNET_HDR + p for p in packets]

    def write_failed(self, frame: bytes, err: OSError) -> list[bytes] | None:
        """Handle a failed write of `frame`: the plain frames to write instead, or None.

        Only EINVAL on a GSO frame is ours to handle: GSO writes are then turned off and the
        frame's packets come back as plain frames. Anything else is the caller's error.
        """
        if err.errno != errno.EINVAL or len(frame) < VNET_HDR_LEN or frame[1] == GSO_NONE:
            return None
        self.gso_writes = False
        self.stats.gso_write_rejected += 1
        # Re-split our own frame (its own scratch stats: these are not frames read).
        packets = decode_frame(frame, OffloadStats())
        self.stats.fallback_packets += len(packets)
        return [ZERO_VNET_HDR + p for p in packets]

    def write(
        self,
        fd: int,
        packets: Sequence[bytes],
        writer: Callable[[int, bytes], int] = os.write,
    ) -> int:
        """Encode and write a batch to a blocking fd; the number of frames written."""
        written = 0
        for frame in self.encode(packets):
            try:
                writer(fd, frame)
                written += 1
            except OSError as e:
                plain = self.write_failed(frame, e)
                if plain is None:
                    raise
                for f in plain:
                    writer(fd, f)
                    written += 1
        return written


class FrameCodec(OffloadCodec):
    """The codec of a queue whose caller handles vnet frames itself (the native data path):
    reads are whole frames, sends are frames (IP packet at `packet_offset`). Only when the
    kernel refuses a GSO write does it split, as OffloadCodec does, for good."""

    packet_offset = VNET_HDR_LEN

    def decode(self, frame: bytes | bytearray | memoryview) -> list[bytes]:
        self.stats.frames_in += 1
        return [frame if isinstance(frame, bytes) else bytes(frame)]

    def encode(self, packets: Sequence[bytes]) -> list[bytes]:
        self.stats.frames_out += len(packets)
        if self.gso_writes:
            return list(packets)
        out: list[bytes] = []
        for frame in packets:
            if len(frame) > VNET_HDR_LEN and frame[1] != GSO_NONE:
                out += [ZERO_VNET_HDR + p for p in decode_frame(frame, OffloadStats())]
            else:
                out.append(frame)
        return out


def vnet_header(frame: bytes | bytearray | memoryview) -> tuple[int, int, int, int, int, int]:
    """The six fields of a frame's header: flags, gso_type, hdr_len, gso_size, csum_start/offset."""
    flags, gso_type, hdr_len, gso_size, start, offset = VNET_HDR.unpack_from(frame)
    return flags, gso_type, hdr_len, gso_size, start, offset


class _Features(Protocol):
    """What TUNSETOFFLOAD accepted (wiretun.tun.codec.OffloadFeatures has this shape)."""

    @property
    def uso(self) -> bool: ...


def make_codec(features: _Features) -> OffloadCodec:
    """The codec for one queue opened with IFF_VNET_HDR (the hook wiretun.tun.codec calls)."""
    # verify_checksums and frames are optional: features without them keep the defaults.
    cls = FrameCodec if getattr(features, "frames", False) else OffloadCodec
    return cls(udp=features.uso, verify=getattr(features, "verify_checksums", True))
