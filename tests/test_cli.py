"""The `wiretun` command line (wiretun.cli): version, -v anywhere, lazy subcommand imports,
logging levels, and the messages of argument errors (no root needed)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from wiretun import __version__
from wiretun.cli import build_parser, chosen_command, main, setup_logging

HEAVY = ("numpy", "pyroute2", "rich", "cryptography", "prometheus_client", "matplotlib")


def _modules_after(code: str) -> list[str]:
    """Heavy or tunnel modules loaded by `code` in a fresh interpreter."""
    probe = (
        "import sys\n"
        f"{code}\n"
        "print('MODULES', *sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{HEAVY!r} or m.startswith('wiretun.tunnel.') or m.startswith('wiretun.tun.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return out.stdout.rpartition("MODULES")[2].split()


def test_help_imports_no_subcommand_and_nothing_heavy() -> None:
    loaded = _modules_after(
        "from wiretun import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass"
    )
    assert loaded == []


def test_a_subcommand_imports_only_its_own_module() -> None:
    loaded = _modules_after("from wiretun import cli\ncli.build_parser(['down', 'wg0'])")
    assert "wiretun.tunnel.down" in loaded
    assert not {"wiretun.tunnel.tunnel", "wiretun.tunnel.show", "numpy", "rich"} & set(loaded)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"wiretun {__version__}\n"


def test_verbose_before_and_after_the_subcommand_add_up() -> None:
    assert chosen_command(["-v", "up", "wg0"]) == "up"
    assert chosen_command(["-v"]) is None
    args = build_parser(["-v", "up", "wg0", "-v"]).parse_args(["-v", "up", "wg0", "-v"])
    assert (args.verbose, args.sub_verbose) == (1, 1)
    args = build_parser(["show", "-vv"]).parse_args(["show", "-vv"])
    assert (args.verbose, args.sub_verbose) == (0, 2)


def test_debug_is_wiretuns_and_pyroute2_needs_a_third_v() -> None:
    root = logging.getLogger()
    before = root.level, root.handlers[:]
    try:
        setup_logging(2)
        assert logging.getLogger("pyroute2").level == logging.WARNING
        setup_logging(3)
        assert logging.getLogger("pyroute2").level == logging.DEBUG
    finally:
        root.setLevel(before[0])
        root.handlers[:] = before[1]
        logging.getLogger("pyroute2").setLevel(logging.NOTSET)


def test_an_interface_name_over_15_characters_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "averyverylongname0.conf"
    path.write_text("[Interface]\n")
    assert main(["up", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "wiretun up: invalid interface name 'averyverylongname0': 18 characters, and Linux "
        "allows at most 15 (IFNAMSIZ)\n"
    )
    assert main(["up", "-i", "wg/0", str(path)]) == 2
    assert "'/' not allowed (only a-z A-Z 0-9 _ = + . -)" in capsys.readouterr().err


def test_show_with_no_interfaces_prints_an_empty_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", "--json", "--socket-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_show_of_a_missing_interface_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", "wt9", "--socket-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    sock = tmp_path / "wt9.sock"
    assert err == f"wiretun show: wt9: no device answers on {sock}: No such file or directory\n"
