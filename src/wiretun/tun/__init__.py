"""The TUN layer: `Tun` (multi-queue, reader/writer threads), `InlineTun` (its queues served
by the asyncio loop itself), their errors, statistics and codec hook."""

from wiretun.tun.codec import Codec, IdentityCodec, OffloadFeatures
from wiretun.tun.errors import (
    InvalidTunName,
    QueueFull,
    TunBroken,
    TunClosed,
    TunError,
    TunExists,
)
from wiretun.tun.inline import InlineTun
from wiretun.tun.stats import QueueStats, TunStats
from wiretun.tun.tun import Tun

__all__ = [
    "Codec",
    "IdentityCodec",
    "InlineTun",
    "InvalidTunName",
    "OffloadFeatures",
    "QueueFull",
    "QueueStats",
    "Tun",
    "TunBroken",
    "TunClosed",
    "TunError",
    "TunExists",
    "TunStats",
]
