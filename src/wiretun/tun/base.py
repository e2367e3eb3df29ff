"""What Tun and InlineTun share: identity, the closed check, link bookkeeping (kernel drops,
foreign queues), the statistics snapshot and the context-manager protocol."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Protocol, Self

from wiretun.tun.codec import Codec, packet_offset
from wiretun.tun.device import LinkInfo, LinkProbe
from wiretun.tun.errors import TunClosed
from wiretun.tun.stats import QueueCounters, QueueStats, TunStats, merge_drops

log = logging.getLogger("wiretun.tun.tun")


class CountedQueue(Protocol):
    @property
    def index(self) -> int: ...
    @property
    def counters(self) -> QueueCounters: ...


class TunBase:
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

    def _queue_stats(self, q: CountedQueue) -> QueueStats:
        """A queue's counters with the frames its codec dropped (by the decoder's reasons,
        e.g. too_many_segments) among the rx drops: a drop nobody can see is a silent one."""
        snap = q.counters.snapshot(q.index)
        codec = self._codecs[q.index] if q.index < len(self._codecs) else None
        dropped: Mapping[str, int] | None = getattr(getattr(codec, "stats", None), "dropped", None)
        if not dropped:
            return snap
        return replace(snap, rx_drops=merge_drops([snap.rx_drops, dict(dropped)]))

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
