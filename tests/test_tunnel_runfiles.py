"""Trusted directories and symlink-proof atomic writes (wiretun.tunnel.runfiles)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from wiretun.tunnel.runfiles import UntrustedDirectoryError, ensure_dir, write_atomic


def test_write_atomic_replaces_a_planted_symlink_instead_of_writing_through_it(
    tmp_path: Path,
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "wg0.pid"
    target.symlink_to(victim)
    write_atomic(str(target), b"123 456\n")
    assert victim.read_text() == "precious"
    assert not target.is_symlink() and target.read_bytes() == b"123 456\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim", "wg0.pid"]  # no temp left


@pytest.mark.parametrize("umask", [0o000, 0o077, 0o777])
def test_write_atomic_sets_exactly_the_mode_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        write_atomic(str(tmp_path / "key"), b"secret", 0o600)
        write_atomic(str(tmp_path / "pid"), b"1 2\n", 0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "pid").stat().st_mode) == 0o644


def test_write_atomic_failure_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "record"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_atomic(str(target), "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["record"]


def test_ensure_dir_creates_and_accepts_our_own(tmp_path: Path) -> None:
    path = tmp_path / "run" / "wireguard"
    ensure_dir(str(path))
    assert path.is_dir()
    ensure_dir(str(path))  # existing and ours: fine


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777, 0o757])
def test_ensure_dir_refuses_a_directory_others_may_write(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "shared"
    path.mkdir()
    path.chmod(mode)
    with pytest.raises(UntrustedDirectoryError, match="writable by others"):
        ensure_dir(str(path))


def test_ensure_dir_refuses_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.mkdir()
    link = tmp_path / "wireguard"
    link.symlink_to(real)
    with pytest.raises(UntrustedDirectoryError, match="symlink"):
        ensure_dir(str(link))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_ensure_dir_refuses_a_directory_of_another_user(tmp_path: Path) -> None:
    path = tmp_path / "theirs"
    path.mkdir(mode=0o755)
    os.chown(path, 65534, 65534)
    with pytest.raises(UntrustedDirectoryError, match="uid 65534"):
        ensure_dir(str(path))
