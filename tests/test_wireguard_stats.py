"""Drop reasons: one enum, and counters that take nothing else."""

from __future__ import annotations

import pytest

from wiretun.wireguard.stats import DROP_REASONS, DropReason, Drops


def test_drop_reasons_are_the_enum_values() -> None:
    assert tuple(r.value for r in DropReason) == DROP_REASONS
    assert len(set(DROP_REASONS)) == len(DROP_REASONS)
    assert "handshake_queue_full" in DROP_REASONS and "replay" in DROP_REASONS


def test_drops_count_by_reason_and_refuse_anything_else() -> None:
    drops = Drops()
    drops.add(DropReason.REPLAY)
    drops.add(DropReason.REPLAY, 2)
    drops.add(DropReason.MAC1, 0)
    assert drops.count(DropReason.REPLAY) == 3
    assert drops.snapshot() == {"replay": 3}  # reasons with a zero count are left out
    with pytest.raises(TypeError, match="DropReason"):
        drops.add("replay")  # type: ignore[arg-type]
    assert drops.snapshot() == {"replay": 3}
