"""harden_process: no core dumps, not dumpable, no working-directory entries in PATH."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from wiretun.tunnel.hardening import safe_path

# Run in a child: the settings are one-way for the process that takes them.
CHILD = """
import json, os, resource
from wiretun.tunnel.hardening import harden_process, is_dumpable
before = is_dumpable()
harden_process()
harden_process()  # idempotent
print(json.dumps({
    "before": before,
    "dumpable": is_dumpable(),
    "core": resource.getrlimit(resource.RLIMIT_CORE),
    "path": os.environ["PATH"],
    "proc_limits": [l for l in open("/proc/self/limits") if l.startswith("Max core")][0],
}))
"""


def test_harden_process_in_a_child() -> None:
    env = {**os.environ, "PATH": f"/usr/bin::.:bin:/bin:{os.pathsep}"}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    got = json.loads(out.stdout)
    assert got["before"] is True  # an ordinary process starts dumpable
    assert got["dumpable"] is False
    assert got["core"] == [0, 0]
    assert got["proc_limits"].split()[4:6] == ["0", "0"]
    assert got["path"] == "/usr/bin:/bin"


def test_safe_path_keeps_absolute_entries_in_order() -> None:
    assert safe_path("/usr/local/bin:/usr/bin") == "/usr/local/bin:/usr/bin"
    assert safe_path(":/sbin:.:./x:/bin:") == "/sbin:/bin"
    assert safe_path("") == ""
