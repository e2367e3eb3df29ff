"""Every harness, by name: the list scripts/fuzz.py and the corpus test run."""

from __future__ import annotations

from fuzz.harness_config import ConfigHarness
from fuzz.harness_datapath import NativeCoalesceHarness, NativeOpenHarness, NativeSealHarness
from fuzz.harness_offload import CoalesceHarness, SplitHarness
from fuzz.harness_packet import PacketHarness
from fuzz.harness_uapi import UapiHarness
from fuzz.harness_wg_device import DeviceHarness
from fuzz.harness_wg_device_batch import DeviceBatchHarness
from fuzz.harness_wg_messages import MessagesHarness
from fuzz.runner import Harness

HARNESS_TYPES: tuple[type[Harness], ...] = (
    MessagesHarness,
    DeviceHarness,
    DeviceBatchHarness,
    SplitHarness,
    CoalesceHarness,
    PacketHarness,
    ConfigHarness,
    UapiHarness,
    NativeSealHarness,
    NativeOpenHarness,
    NativeCoalesceHarness,
)
NAMES = tuple(h.name for h in HARNESS_TYPES)


def make(name: str) -> Harness:
    for cls in HARNESS_TYPES:
        if cls.name == name:
            return cls()
    raise KeyError(f"no harness {name!r}; known: {', '.join(NAMES)}")
