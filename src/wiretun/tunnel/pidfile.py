"""The pid file of a `wiretun up`: its pid and the process's start time, so that `down`
never signals an unrelated process that reused the pid of one that crashed."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from wiretun.tunnel.runfiles import write_atomic

# Field 22 of /proc/PID/stat, counted from 1; fields after the ")" of comm start at 3.
_STARTTIME_AFTER_COMM = 22 - 3


@dataclass(frozen=True, slots=True)
class ProcessId:
    """A process for as long as it lives: pid plus start time (clock ticks after boot)."""

    pid: int
    start_time: int


def process_id(pid: int) -> ProcessId | None:
    """The live process `pid` (None if there is none, or only a zombie is left)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields start after its last ')'.
    fields = stat[stat.rfind(b")") + 1 :].split()
    if len(fields) <= _STARTTIME_AFTER_COMM or fields[0] in (b"Z", b"X"):
        return None
    return ProcessId(pid, int(fields[_STARTTIME_AFTER_COMM]))


def is_alive(proc: ProcessId) -> bool:
    """True while the very process `proc` runs (not a later one with the same pid)."""
    return process_id(proc.pid) == proc


def write_pid_file(path: str) -> ProcessId:
    """Atomically write "PID STARTTIME" for this process to `path` (never through a
    symlink planted at it or at a temporary name)."""
    me = process_id(os.getpid())
    if me is None:  # only without /proc; `down` then finds no process to stop
        raise OSError(f"cannot read /proc/{os.getpid()}/stat")
    write_atomic(path, f"{me.pid} {me.start_time}\n".encode(), 0o644)
    return me


def read_pid_file(path: str) -> ProcessId | None:
    """The process a pid file names, or None if it is missing or not in our format."""
    try:
        with open(path) as f:
            fields = f.read().split()
    except OSError:
        return None
    if len(fields) != 2 or not all(x.isdigit() for x in fields):
        return None
    return ProcessId(int(fields[0]), int(fields[1]))


def remove_pid_file(path: str) -> None:
    """Remove `path` if it still names this process (a newer instance may own it now)."""
    with contextlib.suppress(OSError):
        if read_pid_file(path) == process_id(os.getpid()):
            os.unlink(path)
