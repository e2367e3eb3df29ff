"""Start a daemon detached and wait until it says it is up on a readiness pipe.

The daemon runs as root, so it must not pick up code from where the caller happens to be:
`python -m wiretun` puts the working directory first on sys.path, and a `wiretun/` (or a
fake dependency) there would run as uid 0. `module_command` re-executes the interpreter
isolated (`-I`: no working directory or script directory on sys.path, no PYTHON* variables,
no user site-packages) with exactly the import path this process has, minus the working
directory, and the daemon starts in `/`.
"""

from __future__ import annotations

import os
import subprocess
import sys

import wiretun

# Runs in the child: the caller's import path first, then the module as `python -m` would.
_BOOTSTRAP = "import runpy, sys; sys.path[:0] = {path!r}; runpy.run_module({module!r}, " \
    "run_name='__main__', alter_sys=True)"  # fmt: skip


def trusted_path(cwd: str | None = None) -> list[str]:
    """This process's sys.path as absolute directories, without the working directory (what
    `-m` or `-c` put there: never trusted), with the directory our own `wiretun` package
    came from first, so that the child runs the very code this process runs."""
    here = os.path.realpath(cwd if cwd is not None else os.getcwd())
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(wiretun.__file__)))
    out = [package_root]
    for entry in sys.path:
        if not entry or not os.path.isabs(entry) or os.path.realpath(entry) == here:
            continue
        if entry not in out:
            out.append(entry)
    return out


def module_command(module: str, args: list[str]) -> list[str]:
    """`python -m module args...` for a root daemon: isolated, with `trusted_path()`."""
    code = _BOOTSTRAP.format(path=trusted_path(), module=module)
    return [sys.executable, "-I", "-c", code, *args]


def start_detached(
    cmd: list[str], ready_fd_flag: str = "--ready-fd"
) -> tuple[bool, subprocess.Popen[bytes], int]:
    """Run `cmd` + [`ready_fd_flag`, fd] in its own session, in `/`; (up, the child, exit code
    if not up). A caller that outlives the running child should keep or wait for it.

    The child writes "ready" on the fd once up; if it exits first, it has said why on our
    stderr and its exit code (1 at least) comes back. Paths in `cmd` must be absolute."""
    r, w = os.pipe()
    try:
        child = subprocess.Popen(
            [*cmd, ready_fd_flag, str(w)],
            pass_fds=(w,),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd="/",  # a daemon holds no directory busy and resolves nothing against it
        )
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as pipe:
        status = pipe.read()
    if status.startswith(b"ready"):
        return True, child, 0
    return False, child, child.wait() or 1
