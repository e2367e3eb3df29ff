"""wg-quick's Table= and AllowedIPs semantics as `wiretun up` plans them, and the runtime
fwmark follower's refusal of mark 0 while `not fwmark` rules are installed."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
from pathlib import Path

import pytest

from wiretun.tunnel.config import ConfigError, parse_config
from wiretun.tunnel.routing import (
    FwmarkFollower,
    allowed_ips,
    configured_fwmark,
    plan_routes,
    routing_table,
)

HEAD = "[Interface]\nPrivateKey = 4Cb6HXpToPFrwjVch+a1gI9TS1tXKYn+u4/qWftbuW4=\n"
PEER = "[Peer]\nPublicKey = BDU8H/VB+PjZSlFV55N3qyOHYXtlNMTngERTvM8aaxA=\n"
N = ipaddress.ip_network


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", "auto"),
        ("Table = auto\n", "auto"),
        ("Table = off\n", "off"),
        ("Table = 77\n", 77),
        ("Table = main\n", 254),
        ("Table = 254\n", 254),
        ("Table = local\n", 255),
    ],
)
def test_routing_table(line: str, expected: object) -> None:
    assert routing_table(parse_config(HEAD + line, "wt0.conf")) == expected


def test_routing_table_names_come_from_rt_tables_and_its_d(tmp_path: Path) -> None:
    rt_tables = tmp_path / "rt_tables"
    rt_tables.write_text("# comment\n1000 vpn\n0x20 hexed\n")
    (tmp_path / "rt_tables.d").mkdir()
    (tmp_path / "rt_tables.d" / "x.conf").write_text("2000\tother  # trailing\n")
    for name, number in (("vpn", 1000), ("hexed", 32), ("other", 2000)):
        config = parse_config(HEAD + f"Table = {name}\n", "x.conf")
        assert routing_table(config, str(rt_tables)) == number
    for line in ("Table = nosuch\n", "Table = 0\n"):
        with pytest.raises(ConfigError, match="Table"):
            routing_table(parse_config(HEAD + line, "x.conf"), str(rt_tables))


def test_plan_auto_sends_defaults_to_the_fwmark_table_and_the_rest_to_main() -> None:
    text = HEAD + PEER + "AllowedIPs = 10.0.0.0/8, 0.0.0.0/0, 10.1.0.0/16, ::/0, fd00::/64\n"
    plan = plan_routes(parse_config(text, "x.conf"), "auto")
    # Longest prefix first, as wg-quick sorts them; None = main unless already covered.
    assert plan.routes == (
        (N("fd00::/64"), None),
        (N("10.1.0.0/16"), None),
        (N("10.0.0.0/8"), None),
    )
    assert plan.defaults == (N("0.0.0.0/0"), N("::/0"))


def test_plan_given_table_takes_everything_and_off_nothing() -> None:
    config = parse_config(HEAD + PEER + "AllowedIPs = 0.0.0.0/0, 10.0.0.0/8\n", "x.conf")
    assert plan_routes(config, 1234).routes == ((N("10.0.0.0/8"), 1234), (N("0.0.0.0/0"), 1234))
    assert plan_routes(config, 1234).defaults == ()
    assert plan_routes(config, "off").routes == () and plan_routes(config, "off").defaults == ()


def test_allowed_ips_are_deduplicated_across_peers() -> None:
    other = "[Peer]\nPublicKey = CQIGzX+4JggTY8w0ltnu4+Dck78nEkwDeAFtfzhb4QQ=\n"
    text = HEAD + PEER + "AllowedIPs = 10.0.0.0/8\n" + other + "AllowedIPs = 10.0.0.0/8\n"
    assert allowed_ips(parse_config(text, "x.conf")) == [N("10.0.0.0/8")]


def test_configured_fwmark() -> None:
    assert configured_fwmark(parse_config(HEAD, "x.conf")) is None
    assert configured_fwmark(parse_config(HEAD + "FwMark = off\n", "x.conf")) is None
    assert configured_fwmark(parse_config(HEAD + "FwMark = 0x1234\n", "x.conf")) == 0x1234


class _Rules:
    name = "wt0"

    def __init__(self, installed: bool, fail: bool = False) -> None:
        self.installed, self.fail = installed, fail
        self.moves: list[int] = []

    @property
    def has_fwmark_rules(self) -> bool:
        return self.installed

    async def set_fwmark(self, fwmark: int) -> None:
        if self.fail:
            raise RuntimeError("closed")
        self.moves.append(fwmark)


def test_fwmark_follower_refuses_zero_while_rules_are_installed() -> None:
    marks: list[int] = []
    follower = FwmarkFollower(marks.append)
    follower(0)  # no rules yet (or none needed): sockets only
    follower.rules = _Rules(installed=False)
    follower(0)
    follower.rules = _Rules(installed=True)
    with pytest.raises(OSError) as info:
        follower(0)
    assert info.value.errno == errno.EINVAL
    assert marks == [0, 0]


def test_fwmark_follower_moves_the_rules_and_logs_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def run() -> list[int]:
        follower = FwmarkFollower(lambda mark: None)
        rules = _Rules(installed=True)
        follower.rules = rules
        follower(0x77)
        await follower.settle()
        follower.rules = _Rules(installed=True, fail=True)
        follower(0x99)
        await follower.settle()
        return rules.moves

    assert asyncio.run(run()) == [0x77]
    assert "cannot move the policy rules to fwmark 0x99" in caplog.text
