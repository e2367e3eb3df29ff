"""`wiretun up`'s device helpers: a NetdevError (not an OSError) from the manager is logged
or turned into one line, never a traceback that skips the teardown."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import subprocess
import sys

import pytest

from wiretun.netdev.errors import NetdevError
from wiretun.netdev.manager import AddressResult, IpStack, TunDeviceManager
from wiretun.tunnel import up
from wiretun.tunnel.config import parse_config

CONFIG = """[Interface]
PrivateKey = 4Cb6HXpToPFrwjVch+a1gI9TS1tXKYn+u4/qWftbuW4=
Address = 10.9.0.1/32

[Peer]
PublicKey = BDU8H/VB+PjZSlFV55N3qyOHYXtlNMTngERTvM8aaxA=
AllowedIPs = 10.9.0.0/24
"""


def _failing(op: str) -> NetdevError:
    return NetdevError(op, "wt0", errno.ENODEV)


def test_close_manager_logs_a_netdev_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    manager = TunDeviceManager("wt0", table=77)

    async def close() -> None:
        raise _failing("delete rule")

    monkeypatch.setattr(manager, "close", close)
    asyncio.run(up._close_manager(manager))  # does not raise: the rest of teardown runs
    assert "teardown of wt0: delete rule wt0: [Errno 19]" in caplog.text


class _Recorder:
    """Stands in for the manager's netlink steps; `fail` names the one that raises."""

    def __init__(self, manager: TunDeviceManager, monkeypatch: pytest.MonkeyPatch, fail: str):
        self.calls: list[str] = []
        self.routes: tuple[object, ...] = ()
        for step in ("start", "set_addresses", "set_up", "set_txqueuelen", "set_routes"):
            monkeypatch.setattr(manager, step, self._step(step, fail))

    def _step(self, step: str, fail: str) -> object:
        async def call(*args: object) -> object:
            self.calls.append(step)
            if step == fail:
                raise _failing(step)
            if step == "set_addresses":
                return AddressResult(IpStack.V4, ())
            if step == "set_routes":
                self.routes = args
                return ()
            return None

        return call


def test_configure_device_keeps_going_without_txqueuelen(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    manager = TunDeviceManager("wt0", table=77)
    steps = _Recorder(manager, monkeypatch, fail="set_txqueuelen")
    asyncio.run(up._configure_device(manager, parse_config(CONFIG, "wt0.conf")))
    # Routes are not the manager's any more (netdev.policy installs them as wg-quick does).
    assert steps.calls == ["start", "set_addresses", "set_txqueuelen"]
    assert "keeping the default txqueuelen" in caplog.text


@pytest.mark.parametrize("fail", ["start", "set_addresses"])
def test_configure_device_raises_netdev_errors(monkeypatch: pytest.MonkeyPatch, fail: str) -> None:
    manager = TunDeviceManager("wt0", table=77)
    steps = _Recorder(manager, monkeypatch, fail=fail)
    with pytest.raises(NetdevError):
        asyncio.run(up._configure_device(manager, parse_config(CONFIG, "wt0.conf")))
    assert steps.calls[-1] == fail and "set_routes" not in steps.calls


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
