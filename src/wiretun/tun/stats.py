"""Per-queue counters kept by the owning thread and the immutable snapshots `Tun.stats()` gives."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

_EMPTY: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue's counters at one moment (index -1 for the totals over all queues)."""

    index: int
    rx_packets: int = 0
    rx_bytes: int = 0
    """Bytes of the frames read (including virtio_net_hdr with offloads)."""
    rx_batches: int = 0
    rx_frames: int = 0
    """Reads from the fd; fewer than rx_packets when offloads split super-packets."""
    tx_packets: int = 0
    tx_bytes: int = 0
    """Bytes of the frames written (including virtio_net_hdr with offloads)."""
    tx_batches: int = 0
    tx_frames: int = 0
    """Writes to the fd; fewer than tx_packets when offloads coalesce a flow."""
    refused: int = 0
    """Packets `send`/`send_many` refused with backpressure (QueueFull) for this queue."""
    reader_paused: int = 0
    """Times the reader stopped reading because the inbound channel was full."""
    rx_drops: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    tx_drops: Mapping[str, int] = field(default_factory=lambda: _EMPTY)

    @property
    def rx_mean_batch(self) -> float:
        return self.rx_packets / self.rx_batches if self.rx_batches else 0.0

    @property
    def tx_mean_batch(self) -> float:
        return self.tx_packets / self.tx_batches if self.tx_batches else 0.0

    @property
    def dropped(self) -> int:
        return sum(self.rx_drops.values()) + sum(self.tx_drops.values())


def merge_drops(maps: list[Mapping[str, int]]) -> Mapping[str, int]:
    """Drop counts by reason, summed over `maps` (read-only)."""
    out: dict[str, int] = {}
    for m in maps:
        for reason, n in m.items():
            out[reason] = out.get(reason, 0) + n
    return MappingProxyType(out)


@dataclass(frozen=True, slots=True)
class TunStats:
    """A snapshot of a whole Tun: one QueueStats per queue plus device-level figures."""

    name: str
    queues: tuple[QueueStats, ...]
    foreign_queues: int = 0
    """Queues attached to our device by someone else, at the last check."""
    foreign_seen: int = 0
    """The most foreign queues ever seen attached."""
    kernel_dropped: int | None = None
    """Packets the kernel could not queue to our readers (device tx_dropped), if known."""

    @property
    def total(self) -> QueueStats:
        qs = self.queues
        return QueueStats(
            index=-1,
            rx_packets=sum(q.rx_packets for q in qs),
            rx_bytes=sum(q.rx_bytes for q in qs),
            rx_batches=sum(q.rx_batches for q in qs),
            rx_frames=sum(q.rx_frames for q in qs),
            tx_packets=sum(q.tx_packets for q in qs),
            tx_bytes=sum(q.tx_bytes for q in qs),
            tx_batches=sum(q.tx_batches for q in qs),
            tx_frames=sum(q.tx_frames for q in qs),
            refused=sum(q.refused for q in qs),
            reader_paused=sum(q.reader_paused for q in qs),
            rx_drops=merge_drops([q.rx_drops for q in qs]),
            tx_drops=merge_drops([q.tx_drops for q in qs]),
        )


class QueueCounters:
    """Mutable counters; each field is written by one thread only (reader, writer or producer),
    so plain increments need no lock under the GIL."""

    __slots__ = (
        "reader_paused",
        "refused",
        "rx_batches",
        "rx_bytes",
        "rx_drops",
        "rx_frames",
        "rx_packets",
        "tx_batches",
        "tx_bytes",
        "tx_drops",
        "tx_frames",
        "tx_packets",
    )

    def __init__(self) -> None:
        self.rx_packets = 0
        self.rx_bytes = 0
        self.rx_batches = 0
        self.rx_frames = 0
        self.tx_packets = 0
        self.tx_bytes = 0
        self.tx_batches = 0
        self.tx_frames = 0
        self.refused = 0
        self.reader_paused = 0
        self.rx_drops: dict[str, int] = {}
        self.tx_drops: dict[str, int] = {}

    def snapshot(self, index: int) -> QueueStats:
        return QueueStats(
            index=index,
            rx_packets=self.rx_packets,
            rx_bytes=self.rx_bytes,
            rx_batches=self.rx_batches,
            rx_frames=self.rx_frames,
            tx_packets=self.tx_packets,
            tx_bytes=self.tx_bytes,
            tx_batches=self.tx_batches,
            tx_frames=self.tx_frames,
            refused=self.refused,
            reader_paused=self.reader_paused,
            rx_drops=MappingProxyType(dict(self.rx_drops)),
            tx_drops=MappingProxyType(dict(self.tx_drops)),
        )


def count(drops: dict[str, int], reason: str, n: int = 1) -> None:
    drops[reason] = drops.get(reason, 0) + n
