"""`wiretun up` when the device manager fails (NetdevError injected): one line on stderr,
exit 1, and everything made so far (TUN device, UAPI socket) is removed."""

from __future__ import annotations

import asyncio
import errno
import os

import pytest

from wiretun.lab.netns import Topology, unique_name
from wiretun.netdev.errors import NetdevError
from wiretun.netdev.manager import AddressResult, TunDeviceManager
from wiretun.tunnel import up
from wiretun.tunnel.config import parse_config
from wiretun.tunnel.uapi import socket_path

pytestmark = pytest.mark.root

CONFIG = """[Interface]
PrivateKey = 4Cb6HXpToPFrwjVch+a1gI9TS1tXKYn+u4/qWftbuW4=
Address = 10.9.0.1/32

[Peer]
PublicKey = BDU8H/VB+PjZSlFV55N3qyOHYXtlNMTngERTvM8aaxA=
AllowedIPs = 10.9.0.0/24
"""


@pytest.mark.parametrize("step", ["start", "set_addresses"])
def test_a_netdev_error_is_one_line_and_a_clean_exit(
    topology: Topology,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    step: str,
) -> None:
    ns = topology.netns()
    name = unique_name("wterr")

    async def fail(self: TunDeviceManager, *args: object) -> AddressResult:
        raise NetdevError("injected", self.name, errno.EPERM)

    monkeypatch.setattr(TunDeviceManager, step, fail)
    config = parse_config(CONFIG, f"{name}.conf")
    opts = up.UpOptions(f"{name}.conf", name, 1, True, None)
    with ns.enter():
        code = asyncio.run(up.run_device(config, opts))
    # What was set up before the failure is said as wg-quick says it ("[#] ..."), then the
    # failure in one line.
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("[#] ")]
    assert code == 1
    assert err == [
        f"wiretun up: cannot configure {name}: injected {name}: [Errno 1] Operation not permitted"
    ]
    assert name not in ns.run("ip", "-o", "link")  # the TUN device was closed
    assert not os.path.exists(socket_path(name))
    assert not os.path.exists(up.pid_path(name))
