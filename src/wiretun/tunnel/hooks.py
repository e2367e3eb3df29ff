"""wg-quick's PreUp/PostUp/PreDown/PostDown: bash snippets run in order, `%i` replaced by the
interface name, each under `set -e -o pipefail` as inside wg-quick itself."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Sequence

log = logging.getLogger(__name__)


class HookError(Exception):
    """A hook exited non-zero (or bash could not be run)."""


async def run_hooks(kind: str, hooks: Sequence[str], name: str) -> None:
    """Run each hook with `bash -c`; raises HookError at the first that fails.

    Asynchronous so that the event loop keeps answering the UAPI socket meanwhile: a hook
    such as `wg set %i peer ...` talks to this very process.
    """
    for hook in hooks:
        command = hook.replace("%i", name)
        print(f"[#] {command}", file=sys.stderr, flush=True)
        try:
            proc = await asyncio.create_subprocess_exec(
                "bash", "-e", "-o", "pipefail", "-c", command, stdin=subprocess.DEVNULL
            )
        except OSError as e:
            raise HookError(f"{kind} `{command}`: cannot run bash: {e}") from e
        code = await proc.wait()
        if code != 0:
            raise HookError(f"{kind} `{command}` failed with exit status {code}")
