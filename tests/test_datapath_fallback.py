"""Without the C extension wiretun still works: the pure path takes over with one warning.

Runs in a subprocess that blocks the extension's import, as a machine without a compiler
(or without libssl-dev) at install time would see it.
"""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import logging, sys
sys.modules["wiretun.datapath._native"] = None  # what a failed optional build leaves
logging.basicConfig(level=logging.WARNING, format="%(message)s")
from wiretun import datapath
assert datapath.NATIVE is None and datapath.native() is None, "extension still loaded"
assert datapath.native_error(), "no reason given"
first, second = datapath.load(), datapath.load()
assert first is second is datapath.PURE
print(first.name)
"""


def test_missing_extension_falls_back_to_pure_with_one_warning() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pure"
    warnings = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1, done.stderr
    assert "native data path unavailable" in warnings[0] and "pure Python" in warnings[0]


def test_wiretun_pure_asks_for_pure_without_a_warning() -> None:
    program = (
        "import logging\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from wiretun import datapath\n"
        "print(datapath.load().name)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"WIRETUN_PURE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pure" and done.stderr.strip() == ""
