"""Tests for wiretun.bench.paths that need no namespaces: names, keys, configs, commands."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wiretun.bench import paths
from wiretun.bench.paths import (
    KernelWgPath,
    TunnelEnd,
    VethPath,
    WireguardGoPath,
    WiretunPath,
    first_line,
    path_kind,
    program_version,
    wg_quick_config,
)
from wiretun.bench.plan import DEFAULT_PATHS
from wiretun.lab.netns import NetNS


def test_every_default_path_has_a_kind() -> None:
    kinds = [path_kind(name) for name in DEFAULT_PATHS]
    assert [k.name for k in kinds] == list(DEFAULT_PATHS)
    assert isinstance(kinds[0], VethPath)
    assert isinstance(kinds[1], WireguardGoPath)
    assert kinds[1].program is None  # Debian's, from PATH
    assert isinstance(kinds[2], KernelWgPath)
    assert [k.needs_tun for k in kinds[:3]] == [False, True, False]
    wiretun = [k for k in kinds if isinstance(k, WiretunPath)]
    assert [(k.queues, k.offload, k.pure) for k in wiretun] == [
        (1, True, False), (2, True, False), (4, True, False), (1, False, False), (1, True, True),
    ]  # fmt: skip


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
        "env", "WIRETUN_PURE=0",
        sys.executable, "-m", "wiretun", "up", "/tmp/x.conf", "--interface", "wtt9",
        "--queues", "4", "--no-offload", "--no-tun-threads",
    ]  # fmt: skip
    assert "--offload" in WiretunPath(1, offload=True).command(Path("c"), "i")
    pure = path_kind("wiretun-q2-pure-threads")
    assert isinstance(pure, WiretunPath) and (pure.queues, pure.pure, pure.threads) == (
        2,
        True,
        True,
    )
    assert pure.command(Path("c"), "i")[1] == "WIRETUN_PURE=1"
    assert "--tun-threads" in pure.command(Path("c"), "i")
    with pytest.raises(ValueError, match="unknown path"):
        path_kind("wiretun-q1-pure-pure")


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


def fake_wireguard_go(directory: Path, version_output: str, code: int = 0) -> Path:
    """An executable that answers `--version` the way wireguard-go does."""
    script = directory / "wireguard-go-test"
    script.write_text(f"#!/bin/sh\nprintf '%s' '{version_output}'\nexit {code}\n")
    script.chmod(0o755)
    return script


def test_chosen_wireguard_go_version_and_command(tmp_path: Path) -> None:
    binary = fake_wireguard_go(
        tmp_path, "wireguard-go v0.0.20250522\n\nUserspace WireGuard daemon for linux-amd64.\n"
    )
    kind = path_kind("wireguard-go", wireguard_go=str(binary))
    assert isinstance(kind, WireguardGoPath)
    assert kind.binary() == str(binary)
    assert kind.version() == "wireguard-go v0.0.20250522"
    assert kind.command("wtg7") == [
        "env", "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1", "LOG_LEVEL=error",
        str(binary), "-f", "wtg7",
    ]  # fmt: skip


def test_relative_wireguard_go_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_wireguard_go(tmp_path, "wireguard-go v1\n")
    monkeypatch.chdir(tmp_path)
    assert WireguardGoPath("./wireguard-go-test").binary() == str(tmp_path / "wireguard-go-test")


def test_debian_wireguard_go_is_looked_up_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    assert WireguardGoPath().binary() == "/usr/bin/wireguard-go"
    assert WireguardGoPath().command("i")[3] == "/usr/bin/wireguard-go"


def test_version_capture_failures_are_none(tmp_path: Path) -> None:
    assert program_version(str(fake_wireguard_go(tmp_path, "wireguard-go v1\n", code=1))) is None
    assert program_version(str(tmp_path / "missing")) is None
    assert program_version(str(fake_wireguard_go(tmp_path, ""))) is None
    assert first_line("\n  wireguard-go v0.0.20220316  \n\nmore\n") == "wireguard-go v0.0.20220316"
    assert WireguardGoPath(str(tmp_path / "missing")).version() is None


def test_chosen_wireguard_go_missing_is_a_skip_reason(tmp_path: Path) -> None:
    reason = WireguardGoPath(str(tmp_path / "nope")).unavailable()
    assert reason == f"--wireguard-go {tmp_path / 'nope'}: not an executable file"


def test_kernel_wg_skip_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "wg" else "/usr/bin/x")
    assert KernelWgPath().unavailable() == "wg not installed (apt-get install wireguard-tools)"
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(paths, "kernel_wireguard_problem", lambda: "no module")
    assert KernelWgPath().unavailable() == "no module"
    monkeypatch.setattr(paths, "kernel_wireguard_problem", lambda: None)
    assert KernelWgPath().unavailable() is None


class FakeNS:
    created: list[FakeNS] = []

    def __init__(self) -> None:
        self.name = "wtk-fake"
        self.deleted = False

    @classmethod
    def create(cls, prefix: str) -> FakeNS:
        del prefix
        cls.created.append(cls())
        return cls.created[-1]

    def delete(self) -> None:
        self.deleted = True


@pytest.mark.parametrize(
    ("code", "stderr", "expected"),
    [
        (0, "", None),
        (
            2,
            "Error: Unknown device type.\n",
            "no kernel WireGuard: ip link add type wireguard: "
            "Unknown device type. (modprobe wireguard)",
        ),
    ],
)
def test_kernel_wireguard_probe(
    monkeypatch: pytest.MonkeyPatch, code: int, stderr: str, expected: str | None
) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        del kwargs
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, code, "", stderr)

    FakeNS.created.clear()
    monkeypatch.setattr(paths, "NetNS", FakeNS)
    monkeypatch.setattr(subprocess, "run", fake_run)
    assert paths.kernel_wireguard_problem() == expected
    assert calls == [
        ["ip", "netns", "exec", "wtk-fake", "ip", "link", "add", "wtkprobe", "type", "wireguard"]
    ]
    assert [ns.deleted for ns in FakeNS.created] == [True]  # the throwaway namespace is gone


def test_kernel_wg_version_from_the_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(KernelWgPath, "MODULE_VERSION", tmp_path / "version")
    assert KernelWgPath().version() is None
    (tmp_path / "version").write_text("1.0.0\n")
    assert KernelWgPath().version() == "wireguard module 1.0.0"
