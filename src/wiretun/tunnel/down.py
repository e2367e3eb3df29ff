"""`wiretun down NAME`: stop the `wiretun up` serving NAME and wait for its teardown.

It signals the process named in /var/run/wireguard/NAME.pid (written by `up`) with SIGTERM.
A pid file rather than deleting the UAPI socket (which `up` also obeys): only the pid lets
us wait until the teardown has finished. The file also holds the process's start time: a
pid reused by another process after a crash does not match it, and is left alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time

from wiretun.ifname import is_wg_quick_ifname
from wiretun.tunnel.pidfile import is_alive, read_pid_file
from wiretun.tunnel.up import EXIT_CONFIG, pid_path

STOP_TIMEOUT = 15.0


def stop_instance(name: str, timeout: float = STOP_TIMEOUT) -> bool:
    """SIGTERM the `wiretun up` serving `name` and wait for it to exit; False if none runs.
    Raises TimeoutError if it does not finish in time."""
    proc = read_pid_file(pid_path(name))
    if proc is None:
        return False
    try:
        # A pidfd keeps naming this process even if it exits and its pid is reused before
        # the signal: check the start time through it, then signal through it.
        pidfd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        pidfd = None
    try:
        if pidfd is None or not is_alive(proc):
            # A stale file from a crash, possibly naming a reused pid: leave it alone.
            with contextlib.suppress(OSError):
                os.unlink(pid_path(name))
            return False
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        except ProcessLookupError:
            return False
    finally:
        if pidfd is not None:
            os.close(pidfd)
    pid = proc.pid
    deadline = time.monotonic() + timeout
    while is_alive(proc):
        if time.monotonic() > deadline:
            raise TimeoutError(f"wiretun for {name} (pid {pid}) still running after {timeout}s")
        time.sleep(0.05)
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("interface", help="the interface a `wiretun up` is serving")
    parser.add_argument(
        "--timeout", type=float, default=STOP_TIMEOUT, help="seconds to wait for the teardown"
    )


def run(args: argparse.Namespace) -> int:
    name = args.interface
    if not is_wg_quick_ifname(name):
        print(f"wiretun down: invalid interface name {name!r}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if not stop_instance(name, args.timeout):
            print(f"wiretun down: no running wiretun for {name}", file=sys.stderr)
            return 1
    except (TimeoutError, PermissionError) as e:
        print(f"wiretun down: {e}", file=sys.stderr)
        return 1
    return 0
