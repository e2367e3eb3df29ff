"""HandshakeQueue and InitiationPacer: the budgets that keep handshake work off the data path."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wiretun.wireguard.pacing import (
    HANDSHAKE_QUEUE_SIZE,
    UNDER_LOAD_AFTER,
    UNDER_LOAD_BACKLOG,
    HandshakeQueue,
    InitiationPacer,
)

SRC = ("198.51.100.7", 9)


def test_queue_is_bounded_and_first_in_first_out() -> None:
    q = HandshakeQueue()
    assert q.size == HANDSHAKE_QUEUE_SIZE == 1024
    for i in range(HANDSHAKE_QUEUE_SIZE):
        assert q.push(i.to_bytes(2, "big"), SRC)
    assert not q.push(b"one too many", SRC)
    assert len(q) == HANDSHAKE_QUEUE_SIZE
    assert q.pop() == (b"\x00\x00", SRC) and q.pop() == (b"\x00\x01", SRC)
    q.clear()
    assert len(q) == 0
    with pytest.raises(ValueError, match="room"):
        HandshakeQueue(0)


def test_load_is_a_backlog_of_an_eighth_and_lasts_a_second() -> None:
    q = HandshakeQueue()
    for _ in range(UNDER_LOAD_BACKLOG - 1):
        q.push(b"m", SRC)
    assert not q.under_load(10.0)
    q.push(b"m", SRC)
    assert UNDER_LOAD_BACKLOG == 128 and q.under_load(10.0)
    q.clear()
    assert q.under_load(10.0 + UNDER_LOAD_AFTER - 0.01)
    assert not q.under_load(10.0 + UNDER_LOAD_AFTER)
    q.hold_load(20.0)
    assert q.under_load(20.5) and not q.under_load(21.0)


def test_pacer_allows_a_burst_then_the_rate() -> None:
    pacer: InitiationPacer[int] = InitiationPacer(rate=100, burst=4)
    assert [pacer.admit(i, 0.0) for i in range(6)] == [True] * 4 + [False] * 2
    assert len(pacer) == 2 and 4 in pacer and 5 in pacer
    assert not pacer.admit(4, 0.0)  # already waiting: keeps its place, not twice
    assert len(pacer) == 2
    due = pacer.next_due()
    assert due is not None and 0.01 <= due < 0.0101
    assert not pacer.take_for_first(due - 0.001)
    assert pacer.take_for_first(due) and pacer.first_waiting() == 5
    # A newcomer queues behind the waiting peer even when a token is there.
    assert not pacer.admit(6, 1.0)
    assert pacer.take_for_first(1.0) and pacer.first_waiting() == 6
    pacer.discard(6)
    assert pacer.next_due() is None and pacer.first_waiting() is None
    with pytest.raises(ValueError, match="positive"):
        InitiationPacer(rate=0)


@given(st.lists(st.floats(0.0, 0.05), min_size=1, max_size=60), st.integers(1, 2000))
def test_pacer_next_due_always_finds_its_token(gaps: list[float], rate: int) -> None:
    # A timer set for next_due() must release the first waiting peer: no busy re-arming.
    pacer: InitiationPacer[int] = InitiationPacer(rate=rate, burst=2)
    now = 1000.0
    for i, gap in enumerate(gaps):
        now += gap
        pacer.admit(i, now)
        while (due := pacer.next_due()) is not None and due <= now:
            assert pacer.take_for_first(now)
    while (due := pacer.next_due()) is not None:
        assert pacer.take_for_first(max(now, due))
        now = max(now, due)


def test_pacer_rate_holds_over_time() -> None:
    pacer: InitiationPacer[int] = InitiationPacer(rate=1000, burst=32)
    for i in range(5000):
        pacer.admit(i, 0.0)
    now = 0.0
    released = 32
    while now < 2.0 and (due := pacer.next_due()) is not None:
        now = due
        while pacer.take_for_first(now):
            released += 1
    assert 32 + 1990 <= released <= 32 + 2000
