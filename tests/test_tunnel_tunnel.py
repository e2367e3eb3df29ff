"""wiretun.tunnel.tunnel without root: the device helpers (a NetdevError from the manager is
logged or raised for one line, never a traceback that skips the teardown), the Tunnel's
construction and argument checks."""

from __future__ import annotations

import asyncio
import base64
import errno
import ipaddress
import logging
from pathlib import Path

import pytest

from wiretun.netdev.errors import NetdevError
from wiretun.netdev.manager import AddressResult, IpStack, TunDeviceManager
from wiretun.tunnel import tunnel
from wiretun.tunnel.config import ConfigError, parse_config

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


# -- the Tunnel object, before and without start() ------------------------------------------

KEY_B64 = "BDU8H/VB+PjZSlFV55N3qyOHYXtlNMTngERTvM8aaxA="


def test_from_config_takes_text_a_path_or_a_parsed_config(tmp_path: Path) -> None:
    from_text = tunnel.Tunnel.from_config(CONFIG, name="wt0")
    assert from_text.name == "wt0"
    assert from_text.public_key == "whfRkAvtsx3Cblt9O//zEeO0QAVTCHmBo8ncjCw23UQ="
    path = tmp_path / "wt1.conf"
    path.write_text(CONFIG)
    path.chmod(0o600)
    assert tunnel.Tunnel.from_config(path).name == "wt1"
    assert tunnel.Tunnel.from_config(str(path), name="other").name == "other"
    parsed = parse_config(CONFIG, "wt2.conf")
    assert tunnel.Tunnel.from_config(parsed).config is parsed
    renamed = tunnel.Tunnel.from_config(parsed, name="wt3")
    assert renamed.name == renamed.config.interface.name == "wt3"
    with pytest.raises(ValueError, match="needs name="):
        tunnel.Tunnel.from_config(CONFIG)
    with pytest.raises(ValueError, match=r"queues must be 1\.\.64"):
        tunnel.Tunnel.from_config(CONFIG, name="wt0", queues=0)


def test_a_config_error_names_file_and_line() -> None:
    with pytest.raises(ConfigError, match=r"<wt0 config>:2"):
        tunnel.Tunnel.from_config("[Interface]\nPrivateKey = nope\n", name="wt0")


def test_an_unstarted_tunnel_refuses_changes_and_closes_quietly() -> None:
    t = tunnel.Tunnel.from_config(CONFIG, name="wt0")
    assert not t.running
    with pytest.raises(RuntimeError, match="not started"):
        t.stats()
    with pytest.raises(RuntimeError, match="not started"):
        t.add_peer(KEY_B64)
    asyncio.run(t.close())
    asyncio.run(asyncio.wait_for(t.wait_closed(), 1))
    assert repr(t) == "<Tunnel wt0 closed public key whfRkAvtsx3Cblt9O//zEeO0QAVTCHmBo8ncjCw23UQ=>"


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("192.0.2.1:51820", ("192.0.2.1", 51820)),
        ("[2001:db8::1]:1", ("2001:db8::1", 1)),
        (("192.0.2.1", 9), ("192.0.2.1", 9)),
    ],
)
def test_endpoints(value: str | tuple[str, int], want: tuple[str, int]) -> None:
    assert tunnel._endpoint(value) == want


@pytest.mark.parametrize("value", ["192.0.2.1", "192.0.2.1:0", "[::1]", "host:x"])
def test_bad_endpoints_are_value_errors(value: str) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        tunnel._endpoint(value)


def test_keys_are_base64_or_32_bytes() -> None:
    raw = base64.b64decode(KEY_B64)
    assert tunnel._key(KEY_B64, "public key") == raw
    assert tunnel._key(raw, "public key") == raw
    with pytest.raises(ValueError, match="public key: not a valid key"):
        tunnel._key("abc", "public key")
    with pytest.raises(ValueError, match="32 bytes, not 3"):
        tunnel._key(b"abc", "public key")
    assert tunnel._networks(["10.0.0.1/24", "10.0.0.0/24"]) == (
        ipaddress.ip_network("10.0.0.0/24"),
    )
    with pytest.raises(ValueError, match="allowed ip 'x'"):
        tunnel._networks(["x"])
