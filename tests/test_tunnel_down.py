"""`wiretun down` signals only the process its pid file names: same pid and same start time
(/proc/PID/stat field 22), never an unrelated process that reused the pid."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wiretun.tunnel import up
from wiretun.tunnel.down import stop_instance
from wiretun.tunnel.pidfile import (
    ProcessId,
    is_alive,
    process_id,
    read_pid_file,
    remove_pid_file,
    write_pid_file,
)

# "wiretun" in its command line: the old cmdline check took such a process for ours.
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)  # wiretun up wt0.conf"]


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(up, "RUN_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(SLEEPER)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_process_id_reads_the_start_time_after_an_odd_comm(tmp_path: Path) -> None:
    odd = tmp_path / "a) b (c"  # comm with spaces and parentheses
    shutil.copy("/bin/sleep", odd)
    proc = subprocess.Popen([str(odd), "60"])
    try:
        deadline = time.monotonic() + 5
        while Path(f"/proc/{proc.pid}/comm").read_text().strip() != "a) b (c":  # until exec
            assert time.monotonic() < deadline
            time.sleep(0.01)
        child, me = process_id(proc.pid), process_id(os.getpid())
        assert child is not None and me is not None
        assert child.pid == proc.pid and child.start_time >= me.start_time > 0
        assert is_alive(child)
        assert not is_alive(ProcessId(proc.pid, child.start_time + 1))
    finally:
        proc.kill()
        proc.wait()
    assert process_id(proc.pid) is None


def test_a_zombie_is_not_alive() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        while process_id(proc.pid) is not None:  # exits, then stays a zombie (not reaped)
            os.sched_yield()
        with open(f"/proc/{proc.pid}/stat", "rb") as f:
            assert b") Z " in f.read()
    finally:
        proc.wait()


def test_pid_file_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "wt0.pid")
    me = write_pid_file(path)
    assert read_pid_file(path) == me == process_id(os.getpid())
    with open(path) as f:
        assert f.read() == f"{me.pid} {me.start_time}\n"
    other = ProcessId(me.pid, me.start_time + 1)
    with open(path, "w") as f:
        f.write(f"{other.pid} {other.start_time}\n")
    remove_pid_file(path)  # not ours: kept
    assert read_pid_file(path) == other
    write_pid_file(path)
    remove_pid_file(path)
    assert not os.path.exists(path)


def test_pid_file_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    """Regression (#15): the temporary file had a predictable name (PATH.PID.tmp) and was
    opened with open(..., "w"), so a symlink planted there made root truncate its target."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    path = tmp_path / "wt0.pid"
    (tmp_path / f"wt0.pid.{os.getpid()}.tmp").symlink_to(victim)
    path.symlink_to(victim)
    me = write_pid_file(str(path))
    assert victim.read_text() == "precious"
    assert not path.is_symlink() and read_pid_file(str(path)) == me


def test_down_signals_the_process_named_with_its_start_time(
    run_dir: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    proc = process_id(sleeper.pid)
    assert proc is not None
    (run_dir / "wt0.pid").write_text(f"{proc.pid} {proc.start_time}\n")
    assert stop_instance("wt0", timeout=10)
    assert sleeper.wait(5) == -15  # SIGTERM


def test_down_leaves_a_reused_pid_alone(run_dir: Path, sleeper: subprocess.Popen[bytes]) -> None:
    proc = process_id(sleeper.pid)
    assert proc is not None
    # The pid of a crashed instance, now another process's (a different start time).
    (run_dir / "wt0.pid").write_text(f"{proc.pid} {proc.start_time - 1}\n")
    assert not stop_instance("wt0", timeout=1)
    assert sleeper.poll() is None and is_alive(proc)
    assert not (run_dir / "wt0.pid").exists()  # the stale file is removed


@pytest.mark.parametrize("text", ["{pid}\n", "{pid} x\n", "", "{pid} 1 2\n"])
def test_down_does_not_signal_on_an_unverifiable_pid_file(
    run_dir: Path, sleeper: subprocess.Popen[bytes], text: str
) -> None:
    (run_dir / "wt0.pid").write_text(text.format(pid=sleeper.pid))
    assert not stop_instance("wt0", timeout=1)
    assert sleeper.poll() is None


def test_down_without_a_pid_file(run_dir: Path) -> None:
    assert not stop_instance("wt0", timeout=1)
