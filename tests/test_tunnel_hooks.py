"""Hooks run with bash in order, %i replaced, and the first failure stops the rest."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from wiretun.tunnel.hooks import HookError, run_hooks


def test_hooks_run_in_order_with_the_name(tmp_path: Path) -> None:
    out = tmp_path / "out"
    asyncio.run(run_hooks("PostUp", [f"echo a %i >> {out}", f"echo b%i >> {out}"], "wg7"))
    assert out.read_text() == "a wg7\nbwg7\n"


def test_a_failing_hook_stops_the_rest_as_under_set_e(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(HookError, match=r"PreUp `false; echo no` failed with exit status 1"):
        asyncio.run(run_hooks("PreUp", ["false; echo no", f"echo later >> {out}"], "wg7"))
    assert not out.exists()
