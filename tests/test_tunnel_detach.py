"""start_detached: up once the child says "ready", the child's exit code when it fails first."""

from __future__ import annotations

import os
import sys

from wiretun.tunnel.detach import start_detached

READY = "import os, sys, time; os.write(int(sys.argv[-1]), b'ready'); time.sleep(0.2)"
FAIL = "import sys; sys.exit(3)"


def test_ready_child_is_up_in_its_own_session() -> None:
    up, child, code = start_detached([sys.executable, "-c", READY])
    assert (up, code) == (True, 0)
    assert os.getsid(child.pid) == child.pid  # its own session: no terminal signal reaches it
    assert child.wait(timeout=10) == 0


def test_child_failing_first_returns_its_code() -> None:
    assert start_detached([sys.executable, "-c", FAIL])[0::2] == (False, 3)
