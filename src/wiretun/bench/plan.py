"""What a bench run measures: workloads, path names, repeats and durations."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

WorkloadKind = Literal["tcp", "udp", "ping"]


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    kind: WorkloadKind
    reverse: bool = False  # True: the far namespace sends (iperf3 -R)
    streams: int = 1

    @property
    def unit(self) -> str:
        return "ms" if self.kind == "ping" else "Gbit/s"


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("tcp", "tcp"),
        Workload("tcp-rev", "tcp", reverse=True),
        Workload("tcp-p4", "tcp", streams=4),
        Workload("udp", "udp"),
        Workload("ping", "ping"),
    )
}
QUICK_WORKLOADS = ("tcp", "tcp-rev", "ping")

DEFAULT_PATHS = (
    "veth",
    "wireguard-go",
    "kernel-wg",
    "wiretun-q1",
    "wiretun-q2",
    "wiretun-q4",
    "wiretun-q1-nooffload",
    "wiretun-q1-pure",
)
QUICK_PATHS = ("veth", "wireguard-go", "wiretun-q1")


@dataclass(frozen=True, slots=True)
class Plan:
    paths: tuple[str, ...]
    workloads: tuple[Workload, ...]
    repeats: int
    duration: float  # seconds per iperf3 run
    udp_rate_mbps: int
    ping_count: int
    ping_interval: float
    offload: bool  # for the wiretun kinds that do not pin it in their name
    quick: bool
    wireguard_go: str | None = None  # --wireguard-go as given; None: Debian's from PATH

    def steps(self) -> list[tuple[int, Workload, str]]:
        """(repeat, workload, path) in run order: paths interleaved, A B C A B C."""
        return [(r, w, p) for r in range(self.repeats) for w in self.workloads for p in self.paths]


# Variants of the wiretun path beyond the defaults: any queue count, offloads off, the pure
# data path (WIRETUN_PURE=1), the threaded TUN (--tun-threads).
WIRETUN_VARIANT = re.compile(r"wiretun-q[1-9][0-9]*(-nooffload)?(-pure)?(-threads)?")


def parse_names(
    text: str,
    known: tuple[str, ...] | list[str],
    what: str,
    variants: re.Pattern[str] | None = None,
) -> tuple[str, ...]:
    """Comma-separated names, checked against `known` (or matching `variants`); raises
    ValueError naming the bad ones."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in known and not (variants and variants.fullmatch(n))]
    if bad or not names:
        raise ValueError(
            f"unknown {what} {', '.join(bad) or '(none given)'}; known: {', '.join(known)}"
        )
    return names


def make_plan(
    *,
    quick: bool,
    only: str | None = None,
    workloads: str | None = None,
    repeats: int | None = None,
    duration: float | None = None,
    udp_rate_mbps: int = 500,
    offload: bool = True,
    wireguard_go: str | None = None,
    ping_interval: float = 0.2,
) -> Plan:
    paths = (
        parse_names(only, DEFAULT_PATHS, "path", WIRETUN_VARIANT)
        if only
        else (QUICK_PATHS if quick else DEFAULT_PATHS)
    )
    wnames = (
        parse_names(workloads, list(WORKLOADS), "workload")
        if workloads
        else (QUICK_WORKLOADS if quick else tuple(WORKLOADS))
    )
    if repeats is not None and repeats < 1:
        raise ValueError("--repeats must be at least 1")
    if duration is not None and duration < 1:
        raise ValueError("--duration must be at least 1 second")
    if not 0.001 <= ping_interval <= 10:
        raise ValueError("--ping-interval must be between 0.001 and 10 seconds")
    if wireguard_go is not None and "wireguard-go" not in paths:
        raise ValueError("--wireguard-go is for the wireguard-go path, which --only leaves out")
    return Plan(
        paths=paths,
        workloads=tuple(WORKLOADS[n] for n in wnames),
        repeats=repeats if repeats is not None else (1 if quick else 3),
        duration=duration if duration is not None else (3.0 if quick else 8.0),
        udp_rate_mbps=udp_rate_mbps,
        ping_count=10 if quick else 20,
        ping_interval=ping_interval,
        offload=offload,
        quick=quick,
        wireguard_go=wireguard_go,
    )
