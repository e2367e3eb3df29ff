"""The 8128-counter replay window, against a set-based model and the kernel's test table."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wiretun.wireguard.replay import REJECT_AFTER_MESSAGES, WINDOW_SIZE, ReplayWindow


class Model:
    """The acceptance rule written the obvious way: a set of everything ever accepted."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.last = -1

    def check(self, counter: int) -> bool:
        if counter >= REJECT_AFTER_MESSAGES or counter in self.seen:
            return False
        if counter <= self.last and self.last - counter > WINDOW_SIZE:
            return False
        self.seen.add(counter)
        self.last = max(self.last, counter)
        return True


def test_in_order_then_duplicates() -> None:
    w = ReplayWindow()
    assert all(w.check_and_mark(c) for c in range(20000))
    assert not any(w.check_and_mark(c) for c in range(20000 - WINDOW_SIZE - 100, 20000))


def test_window_edges() -> None:
    w = ReplayWindow()
    assert w.check_and_mark(10_000)
    assert w.check_and_mark(10_000 - WINDOW_SIZE)  # exactly at the edge: still inside
    assert not w.check_and_mark(10_000 - WINDOW_SIZE - 1)
    assert not w.check_and_mark(10_000 - WINDOW_SIZE)
    assert w.would_accept(9_999)
    assert w.check_and_mark(9_999)
    assert not w.would_accept(9_999)


def test_big_jump_forgets_old_slots() -> None:
    w = ReplayWindow()
    for c in range(100):
        w.check_and_mark(c)
    # Slot 50 + 8192 shares a ring slot with 50: it must not look "seen".
    assert w.check_and_mark(50 + 8192)
    assert w.check_and_mark(51 + 8192 + 8192 * 5)
    assert not w.check_and_mark(50 + 8192)


def test_limit() -> None:
    w = ReplayWindow()
    assert not w.check_and_mark(REJECT_AFTER_MESSAGES)
    assert w.check_and_mark(REJECT_AFTER_MESSAGES - 1)
    assert not w.check_and_mark(REJECT_AFTER_MESSAGES - 1)


def test_kernel_table() -> None:
    # A hand-worked table in the spirit of the kernel selftest that wireguard-go's
    # replay_test.go ports (edges of the window, jumps, the message limit): (counter, ok).
    t = WINDOW_SIZE + 1  # "T" in the original: window + 1
    cases = [
        (0, True), (1, True), (1, False), (9, True), (8, True), (7, True), (7, False),
        (t, True), (t - 1, True), (t - 1, False), (t - 2, True), (2, True), (2, False),
        (t + 16, True), (3, False), (t + 16, False), (t * 4, True), (t * 4 - (t - 1), True),
        (10, False), (t * 4 - t, False), (t * 4 - (t + 1), False),
        (t * 4 - (t - 2), True), (t * 4 + 1 - t, False), (0, False),
        (REJECT_AFTER_MESSAGES, False), (REJECT_AFTER_MESSAGES - 1, True),
        (REJECT_AFTER_MESSAGES, False), (REJECT_AFTER_MESSAGES - 1, False),
        (REJECT_AFTER_MESSAGES - 2, True), (REJECT_AFTER_MESSAGES + 1, False),
        (REJECT_AFTER_MESSAGES + 2, False), (REJECT_AFTER_MESSAGES - 2, False),
        (REJECT_AFTER_MESSAGES - 3, True), (0, False),
    ]  # fmt: skip
    w = ReplayWindow()
    m = Model()
    for i, (counter, expected) in enumerate(cases):
        assert w.check_and_mark(counter) is expected, (i, counter)
        assert m.check(counter) is expected, (i, counter)


counters = st.one_of(
    st.integers(0, 40_000),
    st.integers(REJECT_AFTER_MESSAGES - 20_000, REJECT_AFTER_MESSAGES + 5),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(counters, max_size=400))
def test_matches_set_model(seq: list[int]) -> None:
    w = ReplayWindow()
    m = Model()
    for c in seq:
        predicted = w.would_accept(c)
        got = w.check_and_mark(c)
        assert got == predicted
        assert got == m.check(c), c


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 100_000), st.lists(st.integers(-9000, 9000), max_size=300))
def test_matches_model_near_the_front(start: int, deltas: list[int]) -> None:
    # Mostly small moves around a moving front: the reordering a real path produces.
    w = ReplayWindow()
    m = Model()
    front = start
    for d in deltas:
        c = max(0, front + d)
        front = max(front, c)
        assert w.check_and_mark(c) == m.check(c), c
