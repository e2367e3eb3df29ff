"""Tests for wiretun.bench.sampling: /proc CPU time and peak RSS."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from wiretun.bench.sampling import (
    ProcessGoneError,
    cpu_seconds,
    max_peak_rss_bytes,
    peak_rss_bytes,
    total_cpu_seconds,
)


def test_cpu_seconds_grows_with_work() -> None:
    before = cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    after = cpu_seconds(os.getpid())
    assert after - before >= 0.1


def test_cpu_seconds_matches_os_times_for_self() -> None:
    times = os.times()
    assert cpu_seconds(os.getpid()) == pytest.approx(times.user + times.system, abs=0.05)


def test_child_process_cpu_and_peak_rss() -> None:
    # The child allocates ~60 MB and spins; both must show in /proc.
    code = (
        "import time\n"
        "b = bytearray(60_000_000)\n"
        "t = time.process_time() + 0.3\n"
        "while time.process_time() < t: pass\n"
        "print('done', flush=True)\n"
        "input()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"done\n"
            assert total_cpu_seconds([proc.pid]) >= 0.2
            child_peak = peak_rss_bytes(proc.pid)
            assert child_peak >= 60_000_000
            # The child is idle now, so its peak is stable (ours may still grow).
            assert max_peak_rss_bytes([proc.pid]) == child_peak
            both = max_peak_rss_bytes([proc.pid, os.getpid()])
            assert both is not None
            assert both >= child_peak
        finally:
            proc.kill()
    with pytest.raises(ProcessGoneError):
        cpu_seconds(proc.pid)
    with pytest.raises(ProcessGoneError):
        peak_rss_bytes(proc.pid)


def test_no_pids() -> None:
    assert total_cpu_seconds([]) == 0
    assert max_peak_rss_bytes([]) is None
