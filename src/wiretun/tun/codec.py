"""The frame codec hook between a queue fd and IP packets: identity, or the offload codec."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class Codec(Protocol):
    """Turns frames read from a queue fd into IP packets and outbound packets into frames.

    One codec object serves one queue (its reader and its writer thread), so it may keep
    per-queue state. `decode` raises ValueError for a malformed frame (the reader drops and
    counts it); `encode` gets one writer batch, the window in which it may coalesce.
    """

    def decode(self, frame: bytes) -> list[bytes]: ...

    def encode(self, packets: list[bytes]) -> list[bytes]: ...


def packet_offset(codec: Codec | None) -> int:
    """Where the IP packet starts in what a TUN with this codec sends and receives: 0, or
    the virtio_net_hdr's length for a frames codec (wiretun.tun.offload.FrameCodec)."""
    return int(getattr(codec, "packet_offset", 0))


class WriteFallback(Protocol):
    """Optional codec method: called when writing `frame` failed with `err`; returns frames to
    write instead (e.g. plain packets after the kernel refused a GSO frame), or None to count
    the frame as dropped."""

    def write_failed(self, frame: bytes, err: OSError) -> list[bytes] | None: ...


class IdentityCodec:
    """Frames are IP packets (IFF_NO_PI without IFF_VNET_HDR)."""

    def decode(self, frame: bytes) -> list[bytes]:
        return [frame]

    def encode(self, packets: list[bytes]) -> list[bytes]:
        return packets


@dataclass(frozen=True, slots=True)
class OffloadFeatures:
    """What TUNSETOFFLOAD accepted: checksum + TSO always, UDP segmentation if the kernel has it;
    and whether packets must have valid L4 checksums to be merged (False: the caller vouches
    for them, as the WireGuard tunnel does for AEAD-authenticated packets)."""

    uso: bool
    verify_checksums: bool = True
    # The caller splits and coalesces itself (wiretun.datapath): reads give whole vnet
    # frames, sends take them; the codec only steps in when the kernel refuses a GSO write.
    frames: bool = False


CodecFactory = Callable[[OffloadFeatures], Codec]


def offload_codec_factory() -> CodecFactory:
    """A factory of one codec per queue: `wiretun.tun.offload.make_codec`.

    Imported on first use: the offload module pulls in numpy, which plain TUNs never need.
    """
    from wiretun.tun.offload import make_codec  # noqa: PLC0415 (pulls in numpy)

    return make_codec
