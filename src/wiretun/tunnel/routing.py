"""Which routing table and mark a `wiretun up` interface uses, and moving its rule when
`wg set NAME fwmark X` changes the mark at runtime."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Callable

from wiretun.netdev.errors import NetdevError
from wiretun.netdev.manager import TunDeviceManager
from wiretun.netdev.spec import TableSpec, check_table
from wiretun.tunnel.config import ConfigError, TunnelConfig

log = logging.getLogger(__name__)

RT_TABLES = "/etc/iproute2/rt_tables"


def routing_table(config: TunnelConfig, rt_tables: str = RT_TABLES) -> TableSpec:
    """wg-quick's Table=: "off", "auto" (a free table picked at start), a number, or a name
    from rt_tables. Raises ConfigError for an unknown name or a reserved table."""
    table = config.interface.table
    if table in ("off", "auto"):
        return "auto" if table == "auto" else "off"
    number: int | None = table if isinstance(table, int) else None
    if number is None:
        with contextlib.suppress(OSError), open(rt_tables) as f:
            for line in f:
                fields = line.split("#", 1)[0].split()
                if len(fields) == 2 and fields[1] == table and fields[0].isdigit():
                    number = int(fields[0])
                    break
    if number is None:
        raise ConfigError(config.interface.name, None, "Table", f"unknown routing table {table!r}")
    try:
        return check_table(number)
    except ValueError as e:
        raise ConfigError(config.interface.name, None, "Table", str(e)) from None


def configured_fwmark(config: TunnelConfig) -> int | None:
    """FwMark= when set and not off; None lets the manager use its table's number."""
    return config.interface.fwmark or None


class FwmarkFollower:
    """The UAPI backend's `set_fwmark`: re-marks the sockets now and moves the manager's
    policy rule to the new mark (asynchronously: netlink is async, UAPI `apply` is not).

    Mark 0 is refused while a routing table is in use: a rule cannot exclude unmarked
    packets, so the tunnel's own UDP would be routed into the tunnel.
    """

    def __init__(self, remark_sockets: Callable[[int], None]) -> None:
        self._remark = remark_sockets
        self.manager: TunDeviceManager | None = None  # set once the manager has started
        self._moves: set[asyncio.Task[None]] = set()

    def __call__(self, mark: int) -> None:
        manager = self.manager
        if manager is not None and manager.table is not None:
            if mark == 0:
                raise OSError(errno.EINVAL, "fwmark 0 cannot exclude the tunnel's own packets")
            task = asyncio.get_running_loop().create_task(self._move(manager, mark))
            self._moves.add(task)
            task.add_done_callback(self._moves.discard)
        self._remark(mark)

    async def _move(self, manager: TunDeviceManager, mark: int) -> None:
        try:
            await manager.set_fwmark(mark)
        except (NetdevError, RuntimeError) as e:  # RuntimeError: closed meanwhile
            log.warning("%s: cannot move the policy rule to fwmark 0x%x: %s", manager.name, mark, e)

    async def settle(self) -> None:
        """Wait for rule moves in flight (before the manager is closed)."""
        if self._moves:
            await asyncio.gather(*self._moves)
