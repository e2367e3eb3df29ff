"""start_detached: up once the child says "ready", the child's exit code when it fails first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import wiretun
from wiretun.tunnel.detach import module_command, start_detached, trusted_path

READY = "import os, sys, time; os.write(int(sys.argv[-1]), b'ready'); time.sleep(0.2)"
FAIL = "import sys; sys.exit(3)"


def test_ready_child_is_up_in_its_own_session() -> None:
    up, child, code = start_detached([sys.executable, "-c", READY])
    assert (up, code) == (True, 0)
    assert os.getsid(child.pid) == child.pid  # its own session: no terminal signal reaches it
    assert child.wait(timeout=10) == 0


def test_child_failing_first_returns_its_code() -> None:
    assert start_detached([sys.executable, "-c", FAIL])[0::2] == (False, 3)


FAKE_MAIN = "open({marker!r}, 'w').write('ran from the working directory')\n"


def _plant_fake_wiretun(cwd: Path) -> Path:
    """A `wiretun` package (and a fake dependency) in `cwd` that leave a marker if imported."""
    marker = cwd / "PWNED"
    for package in ("wiretun", "pyroute2"):
        (cwd / package).mkdir()
        (cwd / package / "__init__.py").write_text(FAKE_MAIN.format(marker=str(marker)))
    (cwd / "wiretun" / "__main__.py").write_text(FAKE_MAIN.format(marker=str(marker)))
    return marker


def test_plain_dash_m_runs_a_fake_package_from_the_working_directory(tmp_path: Path) -> None:
    """The attack #15 describes, shown working on the old command: the test can see it."""
    marker = _plant_fake_wiretun(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "wiretun", "--help"], cwd=tmp_path, env=env,
                   capture_output=True, timeout=30, check=False)  # fmt: skip
    assert marker.exists()


def test_module_command_ignores_the_working_directory(tmp_path: Path) -> None:
    """Regression (#15): `wiretun up --background` re-ran `python -m wiretun`, which imports
    a `wiretun/` in the working directory first, as root. module_command does not."""
    marker = _plant_fake_wiretun(tmp_path)
    cmd = module_command("wiretun", ["up", "--help"])
    assert cmd[:2] == [sys.executable, "-I"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         check=True)  # fmt: skip
    assert "usage: wiretun up" in out.stdout and "--background" in out.stdout
    assert not marker.exists()


def test_trusted_path_drops_the_working_directory_and_relative_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", ["", str(tmp_path), "relative/dir", "/opt/lib", "/opt/lib"])
    path = trusted_path()
    package_root = str(Path(wiretun.__file__).resolve().parent.parent)
    assert path == [package_root, "/opt/lib"]


def test_detached_child_runs_in_the_root_directory(tmp_path: Path) -> None:
    sleeper = (
        "import os, sys, time; fd = int(sys.argv[-1]); os.write(fd, b'ready'); os.close(fd); "
        "time.sleep(10)"
    )
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        up, child, _ = start_detached([sys.executable, "-c", sleeper])
    finally:
        os.chdir(old)
    try:
        assert up and os.readlink(f"/proc/{child.pid}/cwd") == "/"
    finally:
        child.kill()
        child.wait()
