"""The frame codec hook between a queue fd and IP packets: identity, or the offload codec."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

OFFLOAD_MODULE = "wiretun.tun.offload"


class Codec(Protocol):
    """Turns frames read from a queue fd into IP packets and outbound packets into frames.

    One codec object serves one queue (its reader and its writer thread), so it may keep
    per-queue state. `decode` raises ValueError for a malformed frame (the reader drops and
    counts it); `encode` gets one writer batch, the window in which it may coalesce.
    """

    def decode(self, frame: bytes) -> list[bytes]: ...

    def encode(self, packets: list[bytes]) -> list[bytes]: ...


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


CodecFactory = Callable[[OffloadFeatures], Codec]


def offload_codec_factory() -> CodecFactory:
    """A factory of one codec per queue from the offload module: its
    `make_codec(features: OffloadFeatures) -> Codec` if it has one, else `OffloadCodec(udp=...)`.

    Raises NotImplementedError while that module (written separately) provides neither.
    """
    try:
        module = importlib.import_module(OFFLOAD_MODULE)
    except ModuleNotFoundError as e:
        if e.name != OFFLOAD_MODULE:
            raise
        raise NotImplementedError("offload codec not available yet") from e
    factory = getattr(module, "make_codec", None)
    if callable(factory):
        return factory  # type: ignore[no-any-return]
    codec_class = getattr(module, "OffloadCodec", None)
    if codec_class is None:
        raise NotImplementedError("offload codec not available yet")

    def make(features: OffloadFeatures) -> Codec:
        return codec_class(udp=features.uso)  # type: ignore[no-any-return]

    return make
