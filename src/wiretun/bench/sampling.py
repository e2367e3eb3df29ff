"""CPU time and peak RSS of running processes, read from /proc."""

from __future__ import annotations

import os
from collections.abc import Iterable

_CLK_TCK = os.sysconf("SC_CLK_TCK")
# Fields after the ")" that ends the command name: state is field 3, utime 14, stime 15.
_UTIME_AFTER_COMM = 14 - 3
_STIME_AFTER_COMM = 15 - 3


class ProcessGoneError(LookupError):
    """A sampled process no longer exists (it exited or was never started)."""


def _read(path: str, pid: int) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError) as e:
        raise ProcessGoneError(f"process {pid} is gone") from e


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of all threads of `pid`, in seconds."""
    stat = _read(f"/proc/{pid}/stat", pid)
    # The command name may contain spaces and parentheses: split after the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[_UTIME_AFTER_COMM]) + int(fields[_STIME_AFTER_COMM])
    return ticks / _CLK_TCK


def peak_rss_bytes(pid: int) -> int:
    """The high-water mark of the resident set (VmHWM) of `pid`, in bytes."""
    for line in _read(f"/proc/{pid}/status", pid).splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    # Kernel threads and zombies have no memory lines.
    raise ProcessGoneError(f"process {pid} has no VmHWM (exited?)")


def total_cpu_seconds(pids: Iterable[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def max_peak_rss_bytes(pids: Iterable[int]) -> int | None:
    """The largest VmHWM among `pids`, or None when there are none."""
    peaks = [peak_rss_bytes(pid) for pid in pids]
    return max(peaks) if peaks else None
