"""`wiretun demo` runs to success and leaves no namespace, device or UAPI socket behind."""

from __future__ import annotations

import glob
import subprocess
import sys

import pytest

from wiretun.demo import DEMO_IFACE

pytestmark = pytest.mark.root


def _demo_leftovers() -> list[str]:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line for line in names.stdout.splitlines() if line.startswith("wtdemo")]


def test_demo_succeeds_and_cleans_up() -> None:
    before = set(glob.glob(f"/var/run/wireguard/{DEMO_IFACE}*"))
    proc = subprocess.run(
        [sys.executable, "-m", "wiretun", "demo", "--time", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "demo succeeded" in proc.stdout
    assert "Gbit/s" in proc.stdout
    assert "3 received" in proc.stdout or "3/3" in proc.stdout
    assert _demo_leftovers() == []
    assert set(glob.glob(f"/var/run/wireguard/{DEMO_IFACE}*")) <= before
