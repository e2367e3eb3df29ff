"""A UAPI backend that is only state, for serving `wg` from a test without a device."""

from __future__ import annotations

import weakref
from collections.abc import Iterable

from wiretun.tunnel.uapi_protocol import (
    BlockRecord,
    DeviceSnapshot,
    SetOperation,
    apply_to_snapshot,
    format_get_pieces,
)


class MemoryBackend:
    """A device that is only state: applies operations with the reference semantics
    (`apply_to_snapshot`), so a test can compare a real backend with it."""

    def __init__(self, snapshot: DeviceSnapshot | None = None) -> None:
        self.snapshot = snapshot if snapshot is not None else DeviceSnapshot()
        self._blocks: BlockRecord = weakref.WeakKeyDictionary()  # see PeerBlock

    def get_snapshot(self) -> DeviceSnapshot:
        return self.snapshot

    def get_pieces(self) -> Iterable[str]:
        return format_get_pieces(self.snapshot)

    def apply(self, ops: list[SetOperation]) -> None:
        self.snapshot = apply_to_snapshot(self.snapshot, ops, self._blocks)
