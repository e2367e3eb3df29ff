"""Tests for wiretun.bench.cli and wiretun.bench.env: options and bad-environment messages."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from wiretun.bench import env
from wiretun.bench.cli import command_line
from wiretun.bench.paths import path_kind
from wiretun.cli import build_parser, main


def test_parser_accepts_the_issue_options() -> None:
    args = build_parser().parse_args(
        ["bench", "--quick", "--duration", "2", "--out", "o", "--only", "veth,wireguard-go"]
    )
    assert (args.quick, args.duration, str(args.out), args.only) == (
        True, 2.0, "o", "veth,wireguard-go",
    )  # fmt: skip
    assert args.offload is True
    assert build_parser().parse_args(["bench", "--no-offload"]).offload is False


def test_command_line_round_trip() -> None:
    args = build_parser().parse_args(["bench", "--quick", "--only", "veth", "--out", "d x"])
    assert command_line(args) == "wiretun bench --quick --only veth --out 'd x'"


def test_ping_interval_is_parsed_and_reported() -> None:
    args = build_parser().parse_args(["bench", "--ping-interval", "0.01", "--out", "o"])
    assert args.ping_interval == 0.01
    assert command_line(args) == "wiretun bench --ping-interval 0.01 --out o"
    assert build_parser().parse_args(["bench"]).ping_interval == 0.2


def test_wireguard_go_option_is_parsed_and_reported() -> None:
    args = build_parser().parse_args(["bench", "--quick", "--wireguard-go", "/opt/wg go/wg"])
    assert args.wireguard_go == "/opt/wg go/wg"
    assert build_parser().parse_args(["bench"]).wireguard_go is None
    assert command_line(args) == (
        "wiretun bench --quick --wireguard-go '/opt/wg go/wg' --out bench-results"
    )


def test_wireguard_go_that_is_no_executable_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "wireguard-go"
    assert main(["bench", "--quick", "--wireguard-go", str(missing)]) == 2
    assert f"--wireguard-go {missing}: not an executable file" in capsys.readouterr().err
    missing.write_text("#!/bin/sh\n")  # exists, but not executable
    assert main(["bench", "--quick", "--wireguard-go", str(missing)]) == 2
    assert "not an executable file" in capsys.readouterr().err


def test_wireguard_go_without_its_path_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "--only", "veth", "--wireguard-go", "/usr/bin/wireguard-go"]) == 2
    err = capsys.readouterr().err
    assert "--wireguard-go is for the wireguard-go path, which --only leaves out" in err
    assert "Traceback" not in err


def test_unknown_path_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--only", "veth,nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown path nope" in err
    assert "Traceback" not in err


def test_not_root_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["bench", "--quick", "--only", "veth"]) == 1
    err = capsys.readouterr().err
    assert "needs root" in err
    assert "sudo" in err
    assert "Traceback" not in err


def test_missing_iperf3_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_which = shutil.which
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda n: None if n == "iperf3" else real_which(n))
    assert main(["bench", "--quick", "--only", "veth"]) == 1
    assert "iperf3 not found: apt-get install iperf3" in capsys.readouterr().err


def test_missing_tun_is_reported_for_tunnel_paths_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda n: f"/usr/bin/{n}")
    monkeypatch.setattr(env, "TUN_DEVICE", "/nonexistent/net/tun")
    problems = env.environment_problems([path_kind("veth"), path_kind("wiretun-q1")])
    assert len(problems) == 1
    assert problems[0].startswith("TUN unavailable: /nonexistent/net/tun is missing (modprobe tun")
    assert env.environment_problems([path_kind("veth")]) == []
    assert env.environment_problems([path_kind("kernel-wg")]) == []  # no TUN in kernel WireGuard
