"""Tests for wiretun.ifname: the kernel's interface-name rule (shared by the TUN layer and
the device manager) and wg-quick's stricter one (the command line's)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wiretun.ifname import (
    IFNAMSIZ,
    check_ifname,
    ifname_problem,
    is_wg_quick_ifname,
    wg_quick_ifname_problem,
)
from wiretun.netdev import TunDeviceManager
from wiretun.tun import InvalidTunName
from wiretun.tun.device import validate_name

KERNEL_REFUSES = {
    "": "invalid interface name ''",
    ".": "invalid interface name '.'",
    "..": "invalid interface name '..'",
    "a" * 16: f"invalid interface name '{'a' * 16}': longer than 15 bytes",
    "a/b": "invalid interface name 'a/b': contains '/'",
    "a b": "invalid interface name 'a b': contains ' '",
    "a:b": "invalid interface name 'a:b': contains ':'",
    "tun%d": "invalid interface name 'tun%d': contains '%'",
    "tab\t": "invalid interface name 'tab\\t': contains '\\t'",
    "tün0": "invalid interface name 'tün0': not ASCII",
    "nul\0x": "invalid interface name 'nul\\x00x': contains '\\x00'",
}


@pytest.mark.parametrize(("name", "why"), KERNEL_REFUSES.items())
def test_kernel_rule_says_why(name: str, why: str) -> None:
    assert ifname_problem(name) == why
    with pytest.raises(ValueError, match="invalid interface name"):
        check_ifname(name)
    assert not is_wg_quick_ifname(name)


def test_not_a_string() -> None:
    assert ifname_problem(b"wt0") == "interface name must be str, not bytes"


@pytest.mark.parametrize("name", ["wt0", "a" * 15, "tun-x_1.2", "WG@home", "x=+y"])
def test_kernel_takes(name: str) -> None:
    assert ifname_problem(name) is None
    assert check_ifname(name) == name


@pytest.mark.parametrize(
    ("name", "wg_quick"),
    [("wg0", True), ("a", True), ("x" * 15, True), ("we_ird=+.-0", True), ("WG@home", False),
     ("wg,0", False), ("...", True)],
)  # fmt: skip
def test_wg_quick_rule_is_stricter(name: str, wg_quick: bool) -> None:
    assert ifname_problem(name) is None  # the kernel takes each of them
    assert is_wg_quick_ifname(name) is wg_quick


def test_the_tun_layer_and_the_device_manager_apply_the_same_rule() -> None:
    for name, why in KERNEL_REFUSES.items():
        with pytest.raises(InvalidTunName) as tun_error:
            validate_name(name)
        with pytest.raises(ValueError) as manager_error:
            TunDeviceManager(name)
        assert str(tun_error.value) == str(manager_error.value) == why
    assert validate_name("WG@home") == b"WG@home"


@given(st.text(max_size=20))
def test_accepted_names_fit_an_ifreq_and_wg_quick_names_are_kernel_names(name: str) -> None:
    if ifname_problem(name) is None:
        raw = name.encode("ascii")
        assert 0 < len(raw) < IFNAMSIZ
        assert not set(name) & set("/:% \t\n\r\0")
    if is_wg_quick_ifname(name):
        assert ifname_problem(name) is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("x" * 16, "16 characters, and Linux allows at most 15 (IFNAMSIZ)"),
        ("bad name", "' ' not allowed (only a-z A-Z 0-9 _ = + . -)"),
        ("wg:0/", "'/:' not allowed (only a-z A-Z 0-9 _ = + . -)"),
        ("", "it is empty"),
        ("wg0", None),
    ],
)
def test_wg_quick_ifname_problem_says_why(name: str, why: str | None) -> None:
    assert wg_quick_ifname_problem(name) == why
