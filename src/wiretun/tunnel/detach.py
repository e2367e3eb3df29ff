"""Start a daemon detached and wait until it says it is up on a readiness pipe."""

from __future__ import annotations

import os
import subprocess


def start_detached(
    cmd: list[str], ready_fd_flag: str = "--ready-fd"
) -> tuple[bool, subprocess.Popen[bytes], int]:
    """Run `cmd` + [`ready_fd_flag`, fd] in its own session; (up, the child, exit code if not
    up). A caller that outlives the running child should keep or wait for it.

    The child writes "ready" on the fd once up; if it exits first, it has said why on our
    stderr and its exit code (1 at least) comes back."""
    r, w = os.pipe()
    try:
        child = subprocess.Popen(
            [*cmd, ready_fd_flag, str(w)],
            pass_fds=(w,),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as pipe:
        status = pipe.read()
    if status.startswith(b"ready"):
        return True, child, 0
    return False, child, child.wait() or 1
