"""What Tun and InlineTun share: identity, the closed check, link bookkeeping (kernel drops,
foreign queues), the statistics snapshot and the context-manager protocol."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

from wiretun.tun.codec import Codec, packet_offset
from wiretun.tun.device import LinkInfo, LinkProbe
from wiretun.tun.errors import InvalidPacket, TunClosed
from wiretun.tun.stats import QueueCounters, QueueStats, TunStats, merge_drops

if TYPE_CHECKING:  # not at run time: wiretun.tun.gso pulls in numpy, plain TUNs need none
    from wiretun.tun.gso import OffloadStats

log = logging.getLogger("wiretun.tun.tun")

# The largest IP packet: 64 KiB of IPv4 total length, or an IPv6 header and 64 KiB of payload.
MAX_PACKET = 40 + 65535


def check_packets(packets: Sequence[object], offset: int = 0) -> None:
    """Raise InvalidPacket (a ValueError) unless every item is an IPv4/IPv6 packet (after
    `offset` bytes of virtio_net_hdr) whose IP length is its length; the kernel would take
    anything and drop garbage silently, so misuse is refused here, before any is queued."""
    o = offset
    for p in packets:
        # The common case in one expression (a call per packet would double the cost).
        if (
            type(p) is bytes
            and len(p) >= o + 20
            and (
                (p[o] >> 4 == 4 and (p[o + 2] << 8 | p[o + 3]) == len(p) - o)
                or (
                    p[o] >> 4 == 6
                    and len(p) >= o + 40
                    and 40 + (p[o + 4] << 8 | p[o + 5]) == len(p) - o
                )
            )
        ):
            continue
        problem = _not_a_packet(p, o)
        if problem is not None:
            raise InvalidPacket(problem)


def _not_a_packet(p: object, o: int) -> str | None:
    """Why `p` is not an IP packet; None for a good bytes-like other than bytes."""
    if isinstance(p, str):
        return "a packet is bytes, not str (encode it, or build an IP packet)"
    if not isinstance(p, bytes | bytearray | memoryview):
        return f"a packet is bytes, not {type(p).__name__}"
    data = memoryview(p).cast("B")
    n = len(data) - o
    if n > MAX_PACKET:
        return f"{n}-byte packet: over the IP maximum ({MAX_PACKET} bytes)"
    version = data[o] >> 4 if n > 0 else 0
    if version == 4 and n >= 20:
        length = data[o + 2] << 8 | data[o + 3]
    elif version == 6 and n >= 40:
        length = 40 + (data[o + 4] << 8 | data[o + 5])
    else:
        return f"{n}-byte packet is not IPv4 or IPv6 (version {version}, too short or garbage)"
    if length != n:
        return f"IPv{version} packet of {n} bytes says its length is {length}"
    return None


class CountedQueue(Protocol):
    @property
    def index(self) -> int: ...
    @property
    def counters(self) -> QueueCounters: ...


class ClosedOnExit:
    """`with` and `async with` for a device whose `close()` is idempotent and synchronous."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class TunBase(ClosedOnExit):
    """Subclasses set `_qs` and call `_init_base`; `close()` is theirs."""

    _qs: Sequence[CountedQueue]

    def _init_base(
        self, name: str, probe: LinkProbe | None, codecs: Sequence[Codec] | None = None
    ) -> None:
        self._name = name
        self._codecs = list(codecs) if codecs else []
        # Where the IP packet starts in what we send and receive (a frames codec: 10).
        self._offset = packet_offset(codecs[0]) if codecs else 0
        # Whether the kernel took UDP segmentation offload (USO) for this device.
        self._uso = bool(getattr(codecs[0], "udp", False)) if codecs else False
        self._closed = False
        self._probe = probe
        self._foreign = 0
        self._foreign_seen = 0
        self._kernel_dropped: int | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def uso(self) -> bool:
        """Whether UDP super-packets may be written (the kernel accepted USO)."""
        return self._uso

    @property
    def queues(self) -> int:
        return len(self._qs)

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self._name!r} queues={len(self._qs)} {state}>"

    def _check_open(self) -> None:
        if self._closed:
            raise TunClosed(f"TUN {self._name!r} is closed")

    def _check_link(self) -> None:
        """Query the device (kernel drops, queue count); subclasses guard the query."""
        raise NotImplementedError

    def _note_link(self, info: LinkInfo) -> None:
        """Record a device query: kernel drops, and queues attached by another process
        (logged when their number changes)."""
        if info.tx_dropped >= 0:
            self._kernel_dropped = info.tx_dropped
        if info.num_queues < 0:
            return
        foreign = max(0, info.num_queues - len(self._qs))
        if foreign != self._foreign:
            if foreign:
                log.warning(
                    "TUN %s: %d queue(s) attached by another process; the kernel will steer "
                    "some flows to them",
                    self._name,
                    foreign,
                )
            else:
                log.warning("TUN %s: foreign queues detached", self._name)
        self._foreign = foreign
        self._foreign_seen = max(self._foreign_seen, foreign)

    def stats(self) -> TunStats:
        """An immutable snapshot (queries the device for foreign queues while open)."""
        if not self._closed:
            self._check_link()
        return TunStats(
            name=self._name,
            queues=tuple(self._queue_stats(q) for q in self._qs),
            foreign_queues=self._foreign,
            foreign_seen=self._foreign_seen,
            kernel_dropped=self._kernel_dropped,
        )

    def codec_stats(self) -> list[OffloadStats]:
        """A copy of each queue codec's offload counters (splits, merges and the frames it
        dropped, by reason); empty without offload."""
        return [_copy(stats) for c in self._codecs if (stats := getattr(c, "stats", None))]

    def _queue_stats(self, q: CountedQueue) -> QueueStats:
        """A queue's counters with the frames its codec dropped (by the decoder's reasons,
        e.g. too_many_segments) among the rx drops: a drop nobody can see is a silent one."""
        snap = q.counters.snapshot(q.index)
        codec = self._codecs[q.index] if q.index < len(self._codecs) else None
        dropped: Mapping[str, int] | None = getattr(getattr(codec, "stats", None), "dropped", None)
        if not dropped:
            return snap
        return replace(snap, rx_drops=merge_drops([snap.rx_drops, dict(dropped)]))


def _copy(stats: OffloadStats) -> OffloadStats:
    # A Tun's codec counts in its reader/writer threads: a copy racing an insert of a new
    # drop reason is retried (the only thing that can go wrong under the GIL).
    for _ in range(3):
        try:
            return stats.snapshot()
        except RuntimeError:
            continue
    return stats.snapshot()
