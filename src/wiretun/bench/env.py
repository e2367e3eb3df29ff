"""Checks that the machine can run the bench, with what to install or do when it cannot."""

from __future__ import annotations

import os
import shutil

from wiretun.bench.paths import PathKind

TUN_DEVICE = "/dev/net/tun"


def _tun_problem() -> str | None:
    try:
        fd = os.open(TUN_DEVICE, os.O_RDWR)
    except FileNotFoundError:
        return (
            f"TUN unavailable: {TUN_DEVICE} is missing "
            "(modprobe tun; in a container pass --device /dev/net/tun)"
        )
    except OSError as e:
        return (
            f"TUN unavailable: cannot open {TUN_DEVICE}: {e.strerror} (needs root / CAP_NET_ADMIN)"
        )
    os.close(fd)
    return None


def environment_problems(kinds: list[PathKind]) -> list[str]:
    """Every reason the bench cannot start, each saying what to install or do; [] if none."""
    problems = []
    if os.geteuid() != 0:
        problems.append("wiretun bench needs root to create network namespaces: run it with sudo")
    for tool, package in (("ip", "iproute2"), ("ss", "iproute2"), ("iperf3", "iperf3")):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not found: apt-get install {package}")
    if any(k.needs_tun for k in kinds) and os.geteuid() == 0 and (tun := _tun_problem()):
        problems.append(tun)
    return problems
