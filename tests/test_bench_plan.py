"""Tests for wiretun.bench.plan: defaults, --quick, --only and the interleaved order."""

from __future__ import annotations

import pytest

from wiretun.bench.plan import DEFAULT_PATHS, make_plan


def test_full_defaults() -> None:
    plan = make_plan(quick=False)
    assert plan.paths == DEFAULT_PATHS
    assert plan.paths == (
        "veth", "wireguard-go", "kernel-wg", "wiretun-q1", "wiretun-q2", "wiretun-q4",
        "wiretun-q1-nooffload", "wiretun-q1-pure",
    )  # fmt: skip
    assert [w.name for w in plan.workloads] == ["tcp", "tcp-rev", "tcp-p4", "udp", "ping"]
    assert (plan.repeats, plan.duration) == (3, 8.0)
    assert plan.ping_interval == 0.2
    assert make_plan(quick=False, ping_interval=0.01).ping_interval == 0.01


def test_quick_defaults_and_overrides() -> None:
    plan = make_plan(quick=True)
    assert plan.paths == ("veth", "wireguard-go", "wiretun-q1")
    assert [w.name for w in plan.workloads] == ["tcp", "tcp-rev", "ping"]
    assert (plan.repeats, plan.duration) == (1, 3.0)
    only = make_plan(quick=True, only="veth", duration=2, repeats=2)
    assert only.paths == ("veth",)
    assert (only.repeats, only.duration) == (2, 2)


def test_steps_interleave_paths() -> None:
    plan = make_plan(quick=False, only="veth,wireguard-go", workloads="tcp", repeats=2)
    assert [(r, w.name, p) for r, w, p in plan.steps()] == [
        (0, "tcp", "veth"), (0, "tcp", "wireguard-go"),
        (1, "tcp", "veth"), (1, "tcp", "wireguard-go"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"only": "veth,bogus"}, "unknown path bogus"),
        ({"only": ","}, "unknown path"),
        ({"workloads": "tcp,nope"}, "unknown workload nope"),
        ({"repeats": 0}, "--repeats"),
        ({"duration": 0.5}, "--duration"),
        ({"ping_interval": 0.0}, "--ping-interval"),
        ({"ping_interval": 11.0}, "--ping-interval"),
    ],
)
def test_bad_options(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_plan(quick=False, **kwargs)  # type: ignore[arg-type]


def test_only_keeps_given_order_without_duplicates() -> None:
    assert make_plan(quick=True, only="wireguard-go,veth,veth").paths == ("wireguard-go", "veth")


def test_wireguard_go_binary_needs_the_wireguard_go_path() -> None:
    plan = make_plan(quick=True, wireguard_go="/opt/wg/wireguard-go")
    assert plan.wireguard_go == "/opt/wg/wireguard-go"
    assert make_plan(quick=True).wireguard_go is None
    with pytest.raises(ValueError, match="--wireguard-go is for the wireguard-go path"):
        make_plan(quick=True, only="veth,wiretun-q1", wireguard_go="/opt/wg/wireguard-go")


def test_wiretun_variants_beyond_the_defaults() -> None:
    plan = make_plan(quick=True, only="wiretun-q2-threads,wiretun-q1-nooffload-pure")
    assert plan.paths == ("wiretun-q2-threads", "wiretun-q1-nooffload-pure")
    with pytest.raises(ValueError, match="unknown path wiretun-q0"):
        make_plan(quick=True, only="wiretun-q0")
