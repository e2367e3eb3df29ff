"""Soak, short (issue #8): 20 s of steady iperf3 UDP through wiretun<->wiretun at a rate
well below capacity: no loss, no reordering, no RSS growth, no queue left standing.
The 10-minute run is scripts/soak.py."""

from __future__ import annotations

import pytest

from scenarios.soak import run_soak

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_short_soak_loses_nothing_and_does_not_grow() -> None:
    result = run_soak(20, rate_mbps=100, sample_every=5, warmup=5)
    print(result.report())
    assert len(result.samples) >= 4
    assert result.packets > 100_000  # 100 Mbit/s of 1300-byte datagrams for 25 s: ~240k
    assert result.problems() == []
