"""The rule priority wg-quick gets from the kernel, and rule records surviving JSON."""

from __future__ import annotations

import socket

from wiretun.netdev.policy import RuleSpec, default_rule_priority


def test_default_rule_priority_is_one_below_the_second_rule() -> None:
    assert default_rule_priority([0, 32766, 32767]) == 32765
    assert default_rule_priority([32765, 0, 32766, 32767]) == 32764
    assert default_rule_priority([0]) == 0


def test_rule_spec_round_trip() -> None:
    rule = RuleSpec(socket.AF_INET6, 32764, 254, 0, False, 0)
    assert RuleSpec.from_json(rule.to_json()) == rule
    assert rule.describe() == "IPv6 rule '32764: lookup 254 suppress_prefixlength 0'"
    assert RuleSpec(socket.AF_INET, 32765, 51820, 51820, True).netlink_args()["flags"] == 2
