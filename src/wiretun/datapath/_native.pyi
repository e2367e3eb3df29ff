"""Type stubs of the C data path (wiretun/datapath/_native.c); pure.py is its twin."""

from collections.abc import Sequence

_Buffer = bytes | bytearray | memoryview

MAX_SEGMENTS: int

class Coalescer:
    def __init__(self, *, vnet: bool = True, udp: bool = False) -> None: ...
    def add(self, packet: _Buffer, /) -> None: ...
    def pending(self) -> int: ...
    def finish(self) -> list[bytes]: ...

def seal(
    frames: Sequence[_Buffer],
    key: bytes,
    receiver: int,
    counter: int,
    mtu: int,
    max_bytes: int,
    vnet: bool,
    /,
) -> tuple[bytes, list[tuple[int, int]], int, dict[str, int]]: ...
def segments(frame: _Buffer, vnet: bool, /) -> int: ...
def open_run(
    data: _Buffer,
    offset: int,
    segment: int,
    key: bytes,
    receiver: int,
    ring: bytearray,
    next_counter: int,
    allowed_v4: bytes,
    allowed_v6: bytes,
    coalescer: Coalescer,
    /,
) -> tuple[int, int, int, int, bool, tuple[int, int, int, int]]: ...
