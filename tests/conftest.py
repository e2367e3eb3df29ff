"""Shared fixtures: the `root` marker skips without root; `topology` cleans up namespaces."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from wiretun.lab.netns import Topology


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0 and os.path.exists("/dev/net/tun") and shutil.which("ip"):
        return
    skip = pytest.mark.skip(reason="needs root, iproute2 and /dev/net/tun (network namespaces)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def topology() -> Iterator[Topology]:
    topo = Topology()
    try:
        yield topo
    finally:
        topo.close()
