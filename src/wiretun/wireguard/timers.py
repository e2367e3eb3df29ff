"""WireGuard's protocol timers as deadlines over `now`: no clock, no callbacks, no threads.

The constants and the event -> deadline rules follow wireguard-go's `device/timers.go` (the
kernel has the same values). A `PeerTimers` is told what happened (`data_sent(now)`, ...)
and asked which deadlines have passed (`expire(now)`); the peer then acts on the returned
`TimerAction`s. Jitter comes from an injected random source so tests are deterministic.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final

REKEY_AFTER_MESSAGES: Final = 1 << 60
REKEY_AFTER_TIME: Final = 120.0
REKEY_ATTEMPT_TIME: Final = 90.0
REKEY_TIMEOUT: Final = 5.0
REKEY_TIMEOUT_JITTER_MAX: Final = 0.334
MAX_TIMER_HANDSHAKES: Final = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)  # 18
REJECT_AFTER_TIME: Final = 180.0
KEEPALIVE_TIMEOUT: Final = 10.0
COOKIE_REFRESH_TIME: Final = 120.0
HANDSHAKE_INITIATION_RATE: Final = 1.0 / 50
ZERO_KEYS_AFTER: Final = REJECT_AFTER_TIME * 3
# An initiator's keypair this old gets one more handshake attempt when data arrives.
LAST_MINUTE_REKEY: Final = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT  # 165


class TimerAction(enum.Enum):
    """What a peer must do because a deadline passed."""

    RETRANSMIT_HANDSHAKE = "retransmit_handshake"
    GIVE_UP_HANDSHAKE = "give_up_handshake"
    SEND_KEEPALIVE = "send_keepalive"
    NEW_HANDSHAKE = "new_handshake"
    ZERO_KEYS = "zero_keys"
    PERSISTENT_KEEPALIVE = "persistent_keepalive"


def jitter(rng: Callable[[int], bytes]) -> float:
    """A random delay in [0, 334 ms) added to handshake deadlines, so peers do not sync up."""
    return (int.from_bytes(rng(4), "little") % 334_000) / 1_000_000


def needs_rekey_on_send(is_initiator: bool, created: float, send_counter: int, now: float) -> bool:
    """Whether sending with this keypair should start a new handshake (initiator only)."""
    return send_counter > REKEY_AFTER_MESSAGES or (
        is_initiator and now - created >= REKEY_AFTER_TIME
    )


def needs_rekey_on_receive(is_initiator: bool, created: float, now: float) -> bool:
    """Whether receiving with this keypair calls for a last-minute handshake (initiator)."""
    return is_initiator and now - created >= LAST_MINUTE_REKEY


class PeerTimers:
    """The five per-peer timers of WireGuard, as optional deadlines."""

    __slots__ = (
        "handshake_attempts",
        "keepalive_at",
        "need_another_keepalive",
        "new_handshake_at",
        "persistent_at",
        "persistent_interval",
        "retransmit_at",
        "rng",
        "zero_keys_at",
    )

    def __init__(self, rng: Callable[[int], bytes], persistent_interval: int = 0) -> None:
        self.rng = rng
        self.persistent_interval = persistent_interval
        self.retransmit_at: float | None = None
        self.keepalive_at: float | None = None
        self.new_handshake_at: float | None = None
        self.zero_keys_at: float | None = None
        self.persistent_at: float | None = None
        self.need_another_keepalive = False
        self.handshake_attempts = 0

    # Events (names follow wireguard-go's timersXxx functions).

    def handshake_initiated(self, now: float) -> None:
        self.retransmit_at = now + REKEY_TIMEOUT + jitter(self.rng)

    def handshake_complete(self, now: float) -> None:
        self.retransmit_at = None
        self.handshake_attempts = 0

    def session_derived(self, now: float) -> None:
        self.zero_keys_at = now + ZERO_KEYS_AFTER

    def data_sent(self, now: float) -> None:
        if self.new_handshake_at is None:
            self.new_handshake_at = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter(self.rng)

    def data_received(self, now: float) -> None:
        if self.keepalive_at is None:
            self.keepalive_at = now + KEEPALIVE_TIMEOUT
        else:
            self.need_another_keepalive = True

    def authenticated_sent(self, now: float) -> None:
        # Anything we send tells the peer we are alive: no passive keepalive needed.
        self.keepalive_at = None

    def authenticated_received(self, now: float) -> None:
        # The peer answered: it is not dead, no new handshake needed.
        self.new_handshake_at = None

    def authenticated_traversal(self, now: float) -> None:
        if self.persistent_interval:
            self.persistent_at = now + self.persistent_interval

    def set_persistent_interval(self, interval: int, now: float) -> None:
        """Off cancels the timer, on arms it; a changed interval leaves a pending deadline
        alone and applies from the next traversal (wireguard-go only swaps the value), so
        re-applying the same configuration never postpones a keepalive."""
        was_on = self.persistent_interval > 0
        self.persistent_interval = interval
        if not interval:
            self.persistent_at = None
        elif not was_on or self.persistent_at is None:
            self.persistent_at = now + interval

    def stop_all(self) -> None:
        self.retransmit_at = None
        self.keepalive_at = None
        self.new_handshake_at = None
        self.zero_keys_at = None
        self.persistent_at = None
        self.need_another_keepalive = False
        self.handshake_attempts = 0

    # Queries.

    def next_deadline(self) -> float | None:
        deadlines = [
            d
            for d in (
                self.retransmit_at,
                self.keepalive_at,
                self.new_handshake_at,
                self.zero_keys_at,
                self.persistent_at,
            )
            if d is not None
        ]
        return min(deadlines) if deadlines else None

    def expire(self, now: float) -> list[TimerAction]:
        """Clear (or re-arm) every passed deadline and say what to do about each."""
        actions: list[TimerAction] = []
        if self.retransmit_at is not None and self.retransmit_at <= now:
            self.retransmit_at = None
            # wireguard-go compares with ">", so the 19th retry is the last before giving up.
            if self.handshake_attempts > MAX_TIMER_HANDSHAKES:
                self.keepalive_at = None
                if self.zero_keys_at is None:
                    self.zero_keys_at = now + ZERO_KEYS_AFTER
                actions.append(TimerAction.GIVE_UP_HANDSHAKE)
            else:
                self.handshake_attempts += 1
                actions.append(TimerAction.RETRANSMIT_HANDSHAKE)
        if self.keepalive_at is not None and self.keepalive_at <= now:
            self.keepalive_at = None
            actions.append(TimerAction.SEND_KEEPALIVE)
            if self.need_another_keepalive:
                self.need_another_keepalive = False
                self.keepalive_at = now + KEEPALIVE_TIMEOUT
        if self.new_handshake_at is not None and self.new_handshake_at <= now:
            self.new_handshake_at = None
            actions.append(TimerAction.NEW_HANDSHAKE)
        if self.zero_keys_at is not None and self.zero_keys_at <= now:
            self.zero_keys_at = None
            actions.append(TimerAction.ZERO_KEYS)
        if self.persistent_at is not None and self.persistent_at <= now:
            self.persistent_at = None
            actions.append(TimerAction.PERSISTENT_KEEPALIVE)
        return actions
