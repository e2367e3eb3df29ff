"""`TunDevice`: what every TUN class offers its user (`Tun` and `InlineTun` satisfy it, and
so does `wiretun.testing.memorytun.MemoryTun`: checked by mypy and by one conformance test
module, tests/test_tun_conformance.py, run against all three).

The contract beyond the signatures:
- `recv_many` waits for at least one packet and returns at most `max`, in arrival order per
  queue; one receiver at a time (a second concurrent waiter gets TunBusy); TunClosed after
  `close()`, TunBroken once a queue failed.
- `send`/`send_many` never block: `send` raises QueueFull when there is no room, exactly when
  `send_ready()` would wait; `send_many` takes what fits and returns how many. What is not an
  IP packet (not bytes, not IPv4/IPv6, wrong IP length, over 64 KiB) is an InvalidPacket (a
  ValueError) before anything is sent.
- `stats()` is an immutable snapshot, `codec_stats()` copies of the offload codecs'
  counters; `close()` is idempotent and wakes every waiter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from wiretun.tun.stats import TunStats

if TYPE_CHECKING:
    from wiretun.tun.gso import OffloadStats


class TunDevice(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def queues(self) -> int: ...
    @property
    def uso(self) -> bool: ...
    @property
    def closed(self) -> bool: ...

    async def recv_many(self, max: int = ..., /) -> list[bytes]: ...
    async def send_ready(self) -> None: ...
    def send(self, packet: bytes, /) -> None: ...
    def send_many(self, packets: Sequence[bytes], /) -> int: ...
    def stats(self) -> TunStats: ...
    def codec_stats(self) -> list[OffloadStats]: ...
    def close(self) -> None: ...
