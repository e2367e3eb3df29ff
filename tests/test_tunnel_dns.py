"""DNS through a stub resolvconf on PATH, and the one-line error without any tool."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from wiretun.tunnel.dns import DnsError, resolvconf_iface_prefix, set_dns, unset_dns


def test_resolvconf_gets_servers_and_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "log"
    stub = tmp_path / "resolvconf"
    stub.write_text(f'#!/bin/bash\necho "$*" >> {log}\ncat >> {log}\n')
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    handle = asyncio.run(set_dns("wg7", ["10.0.0.53"], ["corp.example"]))
    asyncio.run(unset_dns(handle))
    assert log.read_text().splitlines() == [
        "-a wg7 -m 0 -x", "nameserver 10.0.0.53", "search corp.example", "-d wg7 -f",
    ]  # fmt: skip


def test_no_tool_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DnsError, match="neither resolvconf nor resolvectl is on PATH"):
        asyncio.run(set_dns("wg7", ["10.0.0.53"], []))


def test_interface_order_prefix(tmp_path: Path) -> None:
    order = tmp_path / "interface-order"
    order.write_text("lo.inet*\ntun*\nwg*\n")
    assert resolvconf_iface_prefix(str(order)) == "tun."
    assert resolvconf_iface_prefix(str(tmp_path / "none")) == ""
