"""`wiretun up`'s own helpers (the Tunnel's are in test_tunnel_tunnel.py): the readiness
pipe and stdio after it, --metrics' address, the privilege check."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from wiretun.tunnel import up


def test_metrics_address() -> None:
    assert up.metrics_address("127.0.0.1:9586") == ("127.0.0.1", 9586)
    assert up.metrics_address("[::1]:9586") == ("::1", 9586)
    for bad in ("9586", "host:", "host:0", "host:70000", ":1"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not HOST:PORT"):
            up.metrics_address(bad)


def test_missing_privilege_reads_the_effective_capabilities() -> None:
    # This process's answer matches its CapEff bit 12, whoever runs the tests.
    with open("/proc/self/status") as f:
        caps = int(next(ln.split()[1] for ln in f if ln.startswith("CapEff:")), 16)
    has_net_admin = bool(caps >> up.CAP_NET_ADMIN & 1)
    assert (up.missing_privilege() is None) == has_net_admin


@pytest.mark.parametrize("keep_output", [False, True])
def test_ready_lets_go_of_stdio_unless_told_to_keep_it(keep_output: bool) -> None:
    """A --background parent reads our stderr until EOF: after 'ready' we let go of stdio.
    A supervisor that keeps our log (--keep-output) gets what comes after 'ready' too."""
    code = (
        "import os, sys\n"
        "from wiretun.tunnel import up\n"
        "print('before', flush=True)\n"
        f"up._signal_ready(int(sys.argv[1]), {keep_output})\n"
        "print('after', flush=True)\n"
    )
    r, w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(w)], pass_fds=(w,), stdout=subprocess.PIPE
        )
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as pipe:
        assert pipe.read() == b"ready\n"  # and EOF: the write end is closed
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert out.split() == ([b"before", b"after"] if keep_output else [b"before"])
