"""The multi-queue TUN layer: `Tun` and its errors, statistics and codec hook."""

from wiretun.tun.codec import Codec, IdentityCodec, OffloadFeatures
from wiretun.tun.errors import (
    InvalidTunName,
    QueueFull,
    TunBroken,
    TunClosed,
    TunError,
    TunExists,
)
from wiretun.tun.stats import QueueStats, TunStats
from wiretun.tun.tun import Tun

__all__ = [
    "Codec",
    "IdentityCodec",
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
