"""Replays the fuzz seed corpus and a short seeded fuzz run of every harness (tests/fuzz)."""

from __future__ import annotations

import signal

import pytest

from fuzz.harness_wg_device import DeviceHarness
from fuzz.harness_wg_device_batch import DeviceBatchHarness
from fuzz.registry import NAMES, make
from fuzz.runner import FuzzResult, fuzz, load_corpus, replay

QUICK_INPUTS = 2000


def _explain(result: FuzzResult) -> str:
    return "\n".join(f"{f.signature}: {f.error} input={f.input.hex()}" for f in result.failures)


@pytest.mark.parametrize("name", NAMES)
def test_corpus_replays_clean(name: str) -> None:
    corpus = load_corpus(name)
    assert corpus, f"tests/fuzz/corpus/{name} is empty"
    result = replay(make(name), corpus)
    assert result.inputs == len(corpus)
    assert result.ok, _explain(result)


@pytest.mark.parametrize("name", NAMES)
def test_short_fuzz_run(name: str) -> None:
    # CPU-time limit (SIGVTALRM): SIGALRM belongs to pytest-timeout.
    result = fuzz(make(name), QUICK_INPUTS, seed=8, limit=2.0, timer=signal.ITIMER_VIRTUAL)
    assert result.inputs >= QUICK_INPUTS
    assert result.ok, _explain(result)


def test_device_drops_are_counted_by_reason() -> None:
    harness = DeviceHarness()
    result = fuzz(harness, QUICK_INPUTS, seed=3, limit=None)
    assert result.ok, _explain(result)
    # Each invalid datagram was checked to add exactly one drop; they must reach deep checks.
    assert sum(harness.reasons.values()) == harness.invalid > QUICK_INPUTS // 2
    for reason in ("bad_size", "bad_type", "unknown_index", "mac1", "replay", "decrypt"):
        assert harness.reasons[reason] > 0, harness.reasons


def test_device_batch_comparisons_reach_deliveries_and_drops() -> None:
    """The receive_gro-vs-receive_datagrams harness is only worth something if both paths
    deliver packets and drop them for the deep reasons (runs the native path opens)."""
    harness = DeviceBatchHarness()
    result = fuzz(harness, QUICK_INPUTS, seed=3, limit=None)
    assert result.ok, _explain(result)
    assert harness.delivered > QUICK_INPUTS
    for reason in ("replay", "allowed_ips", "unknown_index", "bad_packet"):
        assert harness.reasons[reason] > 0, harness.reasons
