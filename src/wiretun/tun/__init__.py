"""The TUN layer: `Tun` (multi-queue, reader/writer threads), `InlineTun` (its queues served
by the asyncio loop itself), the `TunDevice` protocol both satisfy, their errors, statistics
and codec hook."""

from wiretun.tun.codec import Codec, IdentityCodec, OffloadFeatures
from wiretun.tun.errors import (
    InvalidPacket,
    InvalidTunName,
    QueueFull,
    TunBroken,
    TunBusy,
    TunClosed,
    TunError,
    TunExists,
)
from wiretun.tun.inline import InlineTun
from wiretun.tun.port import TunDevice
from wiretun.tun.stats import QueueStats, TunStats
from wiretun.tun.tun import Tun

__all__ = [
    "Codec",
    "IdentityCodec",
    "InlineTun",
    "InvalidPacket",
    "InvalidTunName",
    "OffloadFeatures",
    "QueueFull",
    "QueueStats",
    "Tun",
    "TunBroken",
    "TunBusy",
    "TunClosed",
    "TunDevice",
    "TunError",
    "TunExists",
    "TunStats",
]
