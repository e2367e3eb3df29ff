"""Outbox: datagrams per endpoint in order, one withdrawable per key until drained."""

from __future__ import annotations

from wiretun.wireguard.outbox import Outbox

A = ("192.0.2.1", 51820)
B = ("192.0.2.2", 51820)


def test_drain_groups_per_endpoint_in_order_and_empties() -> None:
    box = Outbox()
    box.put(A, b"a1")
    box.put(B, b"b1")
    box.to(A).extend([b"a2", b"a3"])  # the seal loops append whole runs
    assert box.drain() == [(A, [b"a1", b"a2", b"a3"]), (B, [b"b1"])]
    assert box.drain() == []


def test_withdraw_takes_back_only_what_still_waits() -> None:
    box = Outbox()
    first = b"initiation 1"
    box.put(A, b"data")
    box.put(A, first, key="peer")
    assert box.withdraw("peer") == first
    assert box.withdraw("peer") is None  # once
    assert box.drain() == [(A, [b"data"])]
    box.put(B, b"initiation 2", key="peer")
    assert box.drain() == [(B, [b"initiation 2"])]
    assert box.withdraw("peer") is None  # it was sent: nothing to take back


def test_withdraw_matches_by_identity_and_drops_an_emptied_endpoint() -> None:
    box = Outbox()
    equal, twin = bytes(bytearray(b"same bytes")), bytes(bytearray(b"same bytes"))
    assert equal == twin and equal is not twin
    box.put(A, equal)
    box.put(A, twin, key=1)
    box.put(B, b"alone", key=2)
    assert box.withdraw(1) is twin
    assert box.withdraw(2) == b"alone"
    ((endpoint, group),) = box.drain()  # B had nothing else: no empty group
    assert endpoint == A and len(group) == 1 and group[0] is equal
