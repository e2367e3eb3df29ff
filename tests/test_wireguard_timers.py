"""PeerTimers: deadlines and actions as pure functions of `now` (wireguard-go timers.go)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wiretun.testing.wgpair import seeded_rng
from wiretun.wireguard.timers import (
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    REKEY_TIMEOUT,
    PeerTimers,
    TimerAction,
    TimerQueue,
    jitter,
    needs_rekey_on_receive,
    needs_rekey_on_send,
)

A = TimerAction


def test_jitter_bounds() -> None:
    rng = seeded_rng(3)
    values = [jitter(rng) for _ in range(2000)]
    assert all(0.0 <= v < 0.334 for v in values)
    assert max(values) > 0.3 and min(values) < 0.03


def test_retransmit_then_give_up() -> None:
    t = PeerTimers(seeded_rng(1))
    now = 0.0
    t.handshake_initiated(now)
    retries = 0
    while True:
        due = t.next_deadline()
        assert due is not None
        assert REKEY_TIMEOUT <= due - now < REKEY_TIMEOUT + 0.334
        now = due
        actions = t.expire(now)
        if actions == [A.GIVE_UP_HANDSHAKE]:
            break
        assert actions == [A.RETRANSMIT_HANDSHAKE]
        retries += 1
        t.handshake_initiated(now)
    assert retries == MAX_TIMER_HANDSHAKES + 1
    assert 100.0 <= now < 100.0 + 20 * 0.334
    # Giving up arms key zeroing.
    assert t.zero_keys_at == now + 540.0


def test_handshake_complete_stops_retransmit() -> None:
    t = PeerTimers(seeded_rng(1))
    t.handshake_initiated(0.0)
    t.handshake_complete(1.0)
    assert t.retransmit_at is None and t.handshake_attempts == 0
    assert t.expire(100.0) == []


def test_passive_keepalive_and_need_another() -> None:
    t = PeerTimers(seeded_rng(1))
    t.data_received(0.0)
    t.data_received(3.0)  # already armed: remember to send another
    assert t.expire(9.9) == []
    assert t.expire(10.0) == [A.SEND_KEEPALIVE]
    assert t.keepalive_at == 20.0
    t.authenticated_sent(15.0)  # we sent something: no keepalive needed
    assert t.expire(30.0) == []


def test_dead_peer_new_handshake() -> None:
    t = PeerTimers(seeded_rng(1))
    t.data_sent(0.0)
    t.data_sent(5.0)  # does not push the deadline
    due = t.new_handshake_at
    assert due is not None and KEEPALIVE_TIMEOUT + REKEY_TIMEOUT <= due < 15.334
    t.authenticated_received(1.0)
    assert t.expire(20.0) == []
    t.data_sent(30.0)
    assert t.expire(46.0) == [A.NEW_HANDSHAKE]


def test_persistent_keepalive_rearms_on_traversal() -> None:
    t = PeerTimers(seeded_rng(1), persistent_interval=25)
    t.authenticated_traversal(0.0)
    t.authenticated_traversal(10.0)
    assert t.expire(34.9) == []
    assert t.expire(35.0) == [A.PERSISTENT_KEEPALIVE]
    t.set_persistent_interval(0, 40.0)
    t.authenticated_traversal(40.0)
    assert t.next_deadline() is None


def test_zero_keys_after_session() -> None:
    t = PeerTimers(seeded_rng(1))
    t.session_derived(0.0)
    assert t.next_deadline() == 540.0
    assert t.expire(540.0) == [A.ZERO_KEYS]
    t.session_derived(0.0)
    t.stop_all()
    assert t.next_deadline() is None


def test_rekey_predicates() -> None:
    assert needs_rekey_on_send(True, 0.0, 0, 120.0)
    assert not needs_rekey_on_send(True, 0.0, 0, 119.9)
    assert not needs_rekey_on_send(False, 0.0, 0, 170.0)  # only the initiator rekeys by age
    assert needs_rekey_on_send(False, 0.0, (1 << 60) + 1, 1.0)
    assert needs_rekey_on_receive(True, 0.0, 165.0)
    assert not needs_rekey_on_receive(True, 0.0, 164.9)
    assert not needs_rekey_on_receive(False, 0.0, 170.0)


# ---------------------------------------------------------------- TimerQueue

_EVENTS = (
    "handshake_initiated",
    "handshake_complete",
    "session_derived",
    "data_sent",
    "data_received",
    "authenticated_sent",
    "authenticated_received",
    "authenticated_traversal",
    "stop_all",
    "expire",
)
# (operation, which timers, a value): events on one timers, time passing, Device-like
# handle_timers (`due`), peers added and removed.
_OPS = st.tuples(
    st.sampled_from((*_EVENTS, "persistent", "advance", "due", "remove", "add")),
    st.integers(0, 7),
    st.sampled_from((0.0, 0.5, 1.0, 5.0, 10.0, 25.0)),
)


def _scan(members: dict[int, PeerTimers]) -> float | None:
    """What Device.next_timer() computed before the queue: the minimum over every peer."""
    deadlines = [d for t in members.values() if (d := t.next_deadline()) is not None]
    return min(deadlines) if deadlines else None


@settings(max_examples=300, deadline=None)
@given(st.lists(_OPS, max_size=120))
def test_queue_answers_what_the_scan_of_every_timers_answers(
    ops: list[tuple[str, int, float]],
) -> None:
    rng = seeded_rng(5)
    queue: TimerQueue[int] = TimerQueue()
    members: dict[int, PeerTimers] = {}  # insertion order = the order a Device scans peers
    serial = 0
    now = 0.0

    def add() -> None:
        nonlocal serial
        t = PeerTimers(rng)
        members[serial] = t
        queue.add(t, serial)
        serial += 1

    for _ in range(4):
        add()
    for name, which, value in ops:
        if name == "advance":
            now += value
        elif name == "add":
            add()
        elif name == "due":
            deadlines = {k: t.next_deadline() for k, t in members.items()}
            want = [k for k, d in deadlines.items() if d is not None and d <= now]
            assert queue.due(now) == want
            for k in want:
                assert members[k].expire(now)  # what Device.handle_timers does with them
        elif members:
            key = list(members)[which % len(members)]
            t = members[key]
            if name == "remove":
                del members[key]
                t.stop_all()
                queue.discard(t)
            elif name == "persistent":
                t.set_persistent_interval(int(value), now)
            elif name == "stop_all":
                t.stop_all()
            else:
                getattr(t, name)(now)
        assert queue.next_deadline() == _scan(members)
        assert len(queue) == len(members)


def test_queue_sheds_stale_entries() -> None:
    # A deadline that moves every batch (persistent keepalive under traffic) pushes a new
    # entry each time; the heap stays proportional to the peers, not to the moves.
    queue: TimerQueue[str] = TimerQueue()
    t = PeerTimers(seeded_rng(1), persistent_interval=25)
    queue.add(t, "peer")
    for i in range(10_000):
        t.authenticated_traversal(float(i))
        assert queue.next_deadline() == i + 25.0
    assert len(queue._heap) <= 2 * len(queue) + 64 + 1


def test_queue_refuses_timers_twice_and_forgets_discarded_ones() -> None:
    queue: TimerQueue[str] = TimerQueue()
    t = PeerTimers(seeded_rng(1))
    queue.add(t, "a")
    with pytest.raises(ValueError, match="already"):
        queue.add(t, "b")
    t.session_derived(0.0)
    assert queue.next_deadline() == 540.0
    queue.discard(t)
    assert queue.next_deadline() is None and queue.due(1000.0) == []
    t.session_derived(1.0)  # no longer tells anyone
    assert queue.next_deadline() is None
