"""Tests for wiretun.bench.paths that need no namespaces: names, keys, configs, commands."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from wiretun.bench.paths import (
    TunnelEnd,
    VethPath,
    WireguardGoPath,
    WiretunPath,
    path_kind,
    wg_quick_config,
)
from wiretun.bench.plan import DEFAULT_PATHS
from wiretun.testing.netns import NetNS


def test_every_default_path_has_a_kind() -> None:
    kinds = [path_kind(name) for name in DEFAULT_PATHS]
    assert [k.name for k in kinds] == list(DEFAULT_PATHS)
    assert isinstance(kinds[0], VethPath)
    assert isinstance(kinds[1], WireguardGoPath)
    wiretun = [k for k in kinds if isinstance(k, WiretunPath)]
    assert [(k.queues, k.offload) for k in wiretun] == [(1, True), (2, True), (4, True), (1, False)]


def test_global_no_offload_applies_to_wiretun_kinds() -> None:
    kind = path_kind("wiretun-q2", offload=False)
    assert isinstance(kind, WiretunPath)
    assert (kind.queues, kind.offload, kind.name) == (2, False, "wiretun-q2")


@pytest.mark.parametrize("name", ["wiretun-q0", "wiretun-qx", "wiretun", "bogus"])
def test_unknown_path_names(name: str) -> None:
    with pytest.raises(ValueError, match="unknown path"):
        path_kind(name)


def test_wg_quick_config() -> None:
    ns = NetNS("unused")
    local = TunnelEnd(ns, "wtt1", "PRIV=", "PUB1=", "10.78.3.1", "10.77.0.1", 51823)
    peer = TunnelEnd(ns, "wtt2", "PRIV2=", "PUB2=", "10.78.3.2", "10.77.0.2", 51823)
    assert wg_quick_config(local, peer).splitlines() == [
        "[Interface]",
        "PrivateKey = PRIV=",
        "ListenPort = 51823",
        "Address = 10.78.3.1/24",
        "MTU = 1420",
        "",
        "[Peer]",
        "PublicKey = PUB2=",
        "AllowedIPs = 10.78.3.2/32",
        "Endpoint = 10.77.0.2:51823",
    ]


def test_wiretun_up_command() -> None:
    cmd = WiretunPath(4, offload=False).command(Path("/tmp/x.conf"), "wtt9")
    assert cmd == [
        sys.executable, "-m", "wiretun", "up", "/tmp/x.conf", "--interface", "wtt9",
        "--queues", "4", "--no-offload",
    ]  # fmt: skip
    assert WiretunPath(1, offload=True).command(Path("c"), "i")[-1] == "--offload"


def test_wireguard_go_missing_is_a_skip_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda name: None if name == "wireguard-go" else real_which(name)
    )
    reason = WireguardGoPath().unavailable()
    assert reason == "wireguard-go not installed (apt-get install wireguard-go)"
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "wg" else "/usr/bin/x")
    assert WireguardGoPath().unavailable() == "wg not installed (apt-get install wireguard-tools)"
    assert VethPath().unavailable() is None
