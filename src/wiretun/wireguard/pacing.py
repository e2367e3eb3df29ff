"""Budgets for handshake work, so that it can never starve the data path.

Received handshake and cookie messages wait in a bounded `HandshakeQueue` (1024, dropping
when full, as wireguard-go's handshake queue) until the shell drains a capped number per
loop turn (`Device.process_handshakes`); the queue's backlog is also the load signal
(wireguard-go's IsUnderLoad). Our own initiations pass an `InitiationPacer`: a token bucket
over all peers, with a first-come queue of the peers that wait for a token, so that a
thousand peers wanting a handshake at once cost a steady trickle of DH work instead of one
long stall. Time is always the `now` the caller passes.
"""

from __future__ import annotations

from collections import deque
from typing import Final, Generic, TypeVar

from wiretun.wireguard.events import Endpoint

__all__ = [
    "HANDSHAKE_QUEUE_SIZE",
    "INITIATION_BURST",
    "INITIATION_RATE",
    "UNDER_LOAD_AFTER",
    "UNDER_LOAD_BACKLOG",
    "HandshakeQueue",
    "InitiationPacer",
]

T = TypeVar("T")

HANDSHAKE_QUEUE_SIZE: Final = 1024
"""Handshake messages waiting at most (wireguard-go's QueueHandshakeSize); more are dropped."""

UNDER_LOAD_BACKLOG: Final = HANDSHAKE_QUEUE_SIZE // 8
"""A backlog this long means under load (wireguard-go: the queue 1/8 full) ..."""

UNDER_LOAD_AFTER: Final = 1.0
"""... and stays so for this long after it was last seen (wireguard-go's UnderLoadAfterTime)."""

INITIATION_RATE: Final = 1000
"""Initiations created per second over all peers, at most (one costs ~160 us of DH)."""

INITIATION_BURST: Final = 8
"""Initiations that may be created back to back (~1.3 ms of work, several times that on a
busy machine) before the rate applies: the longest stall a storm of them can cause."""

_NS: Final = 1_000_000_000


class HandshakeQueue:
    """Handshake and cookie messages (copied) with their source, first in first out."""

    __slots__ = ("_items", "_loaded_until", "size")

    def __init__(self, size: int = HANDSHAKE_QUEUE_SIZE) -> None:
        if size <= 0:
            raise ValueError("the handshake queue needs room for at least one message")
        self.size = size
        self._items: deque[tuple[bytes, Endpoint]] = deque()
        self._loaded_until = float("-inf")

    def __len__(self) -> int:
        return len(self._items)

    def push(self, message: bytes, src: Endpoint) -> bool:
        """Queue `message`; False (and nothing kept) when the queue is full."""
        items = self._items
        if len(items) >= self.size:
            return False
        items.append((message, src))
        return True

    def pop(self) -> tuple[bytes, Endpoint]:
        return self._items.popleft()

    def clear(self) -> None:
        self._items.clear()

    def under_load(self, now: float) -> bool:
        """wireguard-go's rule: a backlog of 1/8 of the queue now, or one in the last second."""
        if len(self._items) >= UNDER_LOAD_BACKLOG:
            self._loaded_until = now + UNDER_LOAD_AFTER
            return True
        return now < self._loaded_until

    def hold_load(self, now: float) -> None:
        """Count as under load for the next UNDER_LOAD_AFTER seconds (another signal said so)."""
        self._loaded_until = max(self._loaded_until, now + UNDER_LOAD_AFTER)


class InitiationPacer(Generic[T]):
    """A token bucket for creating initiations, and the peers waiting for a token in order.

    Tokens are integer nanoseconds of credit (as the RateLimiter's), so the time at which
    the next token is due is exact and a timer set for it always finds one.
    """

    __slots__ = ("_cost", "_credit", "_last", "_max_credit", "_waiting")

    def __init__(self, rate: int = INITIATION_RATE, burst: int = INITIATION_BURST) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self._cost = _NS // rate
        self._max_credit = self._cost * burst
        self._credit = self._max_credit
        self._last: int | None = None
        self._waiting: dict[T, None] = {}  # insertion-ordered: first come, first served

    def __len__(self) -> int:
        """How many peers wait for a token."""
        return len(self._waiting)

    def __contains__(self, peer: object) -> bool:
        return peer in self._waiting

    def _refill(self, now: float) -> None:
        now_ns = round(now * _NS)
        last = self._last
        if last is not None and now_ns > last:
            self._credit = min(self._max_credit, self._credit + now_ns - last)
        if last is None or now_ns > last:
            self._last = now_ns

    def admit(self, peer: T, now: float) -> bool:
        """True if `peer` may create an initiation now (a token is spent); otherwise it
        waits its turn behind the peers already waiting (at most once in the queue)."""
        waiting = self._waiting
        if peer in waiting:
            return False
        if not waiting and self._take(now):
            return True
        waiting[peer] = None
        return False

    def _take(self, now: float) -> bool:
        self._refill(now)
        if self._credit >= self._cost:
            self._credit -= self._cost
            return True
        return False

    def first_waiting(self) -> T | None:
        return next(iter(self._waiting), None)

    def take_for_first(self, now: float) -> bool:
        """Spend a token on the first waiting peer (which then leaves the queue); False if
        none is due yet."""
        first = self.first_waiting()
        if first is None or not self._take(now):
            return False
        del self._waiting[first]
        return True

    def discard(self, peer: T) -> None:
        """`peer` no longer waits (removed, or it no longer needs the initiation)."""
        self._waiting.pop(peer, None)

    def next_due(self) -> float | None:
        """When the first waiting peer gets its token (None if nobody waits)."""
        if not self._waiting:
            return None
        missing = max(0, self._cost - self._credit)
        last = self._last if self._last is not None else 0
        # 1 us late, so that float rounding of `now` can never leave the token 1 ns short.
        return (last + missing + 1000) / _NS
