"""Table= / FwMark= as `wiretun up` hands them to the device manager, and the runtime
fwmark follower's refusal of mark 0 while a table is in use."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest

from wiretun.netdev.manager import TunDeviceManager, _free_table
from wiretun.netdev.spec import AUTO_TABLE_START
from wiretun.tunnel.config import ConfigError, parse_config
from wiretun.tunnel.routing import FwmarkFollower, configured_fwmark, routing_table

HEAD = "[Interface]\nPrivateKey = 4Cb6HXpToPFrwjVch+a1gI9TS1tXKYn+u4/qWftbuW4=\n"


@pytest.mark.parametrize(
    ("line", "expected"),
    [("", "auto"), ("Table = auto\n", "auto"), ("Table = off\n", "off"), ("Table = 77\n", 77)],
)
def test_routing_table(line: str, expected: object) -> None:
    assert routing_table(parse_config(HEAD + line, "wt0.conf")) == expected


def test_routing_table_names_and_reserved_numbers(tmp_path: Path) -> None:
    rt_tables = tmp_path / "rt_tables"
    rt_tables.write_text("# comment\n255\tlocal\n1000 vpn # ours\n")
    assert routing_table(parse_config(HEAD + "Table = vpn\n", "x.conf"), str(rt_tables)) == 1000
    for line in ("Table = nosuch\n", "Table = main\n", "Table = 254\n"):
        with pytest.raises(ConfigError, match="Table"):
            routing_table(parse_config(HEAD + line, "x.conf"), str(rt_tables))


def test_configured_fwmark() -> None:
    assert configured_fwmark(parse_config(HEAD, "x.conf")) is None
    assert configured_fwmark(parse_config(HEAD + "FwMark = off\n", "x.conf")) is None
    assert configured_fwmark(parse_config(HEAD + "FwMark = 0x1234\n", "x.conf")) == 0x1234


def test_manager_table_modes_before_start() -> None:
    auto = TunDeviceManager("wt0", table="auto", fwmark=None)
    assert (auto.table, auto.fwmark) == (None, 0)  # picked by start()
    assert TunDeviceManager("wt0", table="auto", fwmark=7).fwmark == 7
    numbered = TunDeviceManager("wt0", table=77, fwmark=None)
    assert (numbered.table, numbered.fwmark) == (77, 77)
    off = TunDeviceManager("wt0", table="off", fwmark=None)
    assert (off.table, off.fwmark) == (None, 0)
    with pytest.raises(ValueError, match="reserved"):
        TunDeviceManager("wt0", table=254)
    with pytest.raises(ValueError):
        TunDeviceManager("wt0", table="main")  # type: ignore[arg-type]


def test_free_table_skips_used_numbers() -> None:
    assert _free_table(set()) == AUTO_TABLE_START
    assert _free_table({0, 254, 255, AUTO_TABLE_START, AUTO_TABLE_START + 1}) == 51822


def test_fwmark_follower_refuses_zero_while_a_table_is_in_use() -> None:
    marks: list[int] = []
    follower = FwmarkFollower(marks.append)
    follower(0)  # no manager yet (or Table=off): sockets only
    follower.manager = TunDeviceManager("wt0", table=77)
    with pytest.raises(OSError) as info:
        follower(0)
    assert info.value.errno == errno.EINVAL
    assert marks == [0]


def test_fwmark_follower_logs_a_failed_rule_move(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        follower = FwmarkFollower(lambda mark: None)
        follower.manager = TunDeviceManager("wt0", table=77)  # not started: the move fails
        follower(0x99)
        await follower.settle()

    asyncio.run(run())
    assert "cannot move the policy rule to fwmark 0x99" in caplog.text
