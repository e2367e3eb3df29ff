"""wiretun-go's command line: --version, usage, and the bare interface it starts with."""

from __future__ import annotations

import pytest

from wiretun.tunnel.uapi_protocol import ZERO_KEY
from wiretun.tunnel.wiretun_go import bare_config, main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("wiretun-go v")


def test_usage_and_bad_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 1
    assert "Usage: wiretun-go [-f/--foreground] INTERFACE-NAME" in capsys.readouterr().err
    assert main(["-f", "bad/name"]) == 1


def test_bare_config_has_no_key_no_peers_no_routes() -> None:
    config = bare_config("wg7")
    assert config.interface.private_key == ZERO_KEY and config.peers == ()
    assert config.interface.table == "off" and config.interface.mtu == 1420
