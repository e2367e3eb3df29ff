"""wiretun.tunnel.tunnel without root: the device helpers (a NetdevError from the manager is
logged or raised for one line, never a traceback that skips the teardown), the Tunnel's
construction and argument checks."""

from __future__ import annotations

import asyncio
import errno
import logging

import pytest

from wiretun.netdev.errors import NetdevError
from wiretun.netdev.manager import AddressResult, IpStack, TunDeviceManager
from wiretun.tunnel import tunnel
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
    asyncio.run(tunnel.close_manager(manager))  # does not raise: the rest of teardown runs
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
    asyncio.run(tunnel.configure_device(manager, parse_config(CONFIG, "wt0.conf")))
    # Routes are not the manager's any more (netdev.policy installs them as wg-quick does).
    assert steps.calls == ["start", "set_addresses", "set_txqueuelen"]
    assert "keeping the default txqueuelen" in caplog.text


@pytest.mark.parametrize("fail", ["start", "set_addresses"])
def test_configure_device_raises_netdev_errors(monkeypatch: pytest.MonkeyPatch, fail: str) -> None:
    manager = TunDeviceManager("wt0", table=77)
    steps = _Recorder(manager, monkeypatch, fail=fail)
    with pytest.raises(NetdevError):
        asyncio.run(tunnel.configure_device(manager, parse_config(CONFIG, "wt0.conf")))
    assert steps.calls[-1] == fail and "set_routes" not in steps.calls
