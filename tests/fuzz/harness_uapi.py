"""UAPI requests: the byte stream splitter and parse_set on arbitrary and mutated input.

Only UapiProtocolError (from the reader: close the connection) and UapiError (from a set:
answer with its errno) may escape. The reader must give the same requests however the
bytes are chunked, and every parsed set must apply to a device snapshot and format back."""

from __future__ import annotations

import hashlib
import random

from fuzz.mutate import TEXT_MUTATORS
from fuzz.runner import Harness
from wiretun.tunnel.uapi_protocol import (
    DeviceSnapshot,
    GetRequest,
    SetRequest,
    UapiError,
    UapiProtocolError,
    UapiRequestReader,
    apply_to_snapshot,
    format_get,
    format_set_reply,
    parse_set,
)

_KEY1 = "a8" * 32
_KEY2 = "e4" * 31 + "21"
_KEY3 = "0f" * 32

VALID = [
    b"get=1\n\n",
    (
        f"set=1\nprivate_key={_KEY1}\nlisten_port=51820\nfwmark=0\nreplace_peers=true\n"
        f"public_key={_KEY2}\npreshared_key={_KEY3}\nendpoint=[2001:db8::1]:51820\n"
        "persistent_keepalive_interval=25\nreplace_allowed_ips=true\n"
        "allowed_ip=10.0.0.2/32\nallowed_ip=fd00::/64\nallowed_ip=-10.9.0.0/16\n"
        f"protocol_version=1\npublic_key={_KEY3}\nupdate_only=true\nendpoint=192.0.2.7:1\n"
        f"public_key={_KEY1}\nremove=true\nallowed_ip=1.2.3.4/32\n\nget=1\n\n"
    ).encode(),
    f"set=1\npublic_key={_KEY2}\nremove=true\n\r\n".encode(),
    b"set=1\nlisten_port=65536\n\n",
    b"get=1\nx",
]


def _same(a: list[object], b: list[object]) -> bool:
    """Equal request lists (UapiError compares by identity, so compare what it says)."""

    def norm(r: object) -> object:
        if isinstance(r, GetRequest) and r.error is not None:
            return ("get", r.error.errno, str(r.error))
        return r

    return [norm(r) for r in a] == [norm(r) for r in b]


def _requests(data: bytes, cuts: list[int]) -> list[object]:
    """What a reader makes of `data` fed in pieces split at `cuts` (a set's pieces joined:
    how they are cut depends on the reads, the lines do not)."""
    reader = UapiRequestReader(max_line=512)
    out: list[object] = []
    lines: list[str] = []
    start = 0
    try:
        for end in [*cuts, len(data)]:
            reader.feed(data[start:end])
            start = end
            while (request := reader.next_request()) is not None:
                if isinstance(request, SetRequest):
                    lines += request.lines
                    if request.final:
                        out.append(SetRequest(tuple(lines)))
                        lines = []
                else:
                    out.append(request)
    except UapiProtocolError:
        # Lines of the set before the one that closed it may have gone out in pieces (and
        # been applied, as wireguard-go applies each line it reads): not compared.
        return [*out, "closed"]
    if lines:
        out.append(("unfinished set", tuple(lines)))
    return out


class UapiHarness(Harness):
    name = "uapi"
    mutators = TEXT_MUTATORS
    random_share = 0.05

    def seeds(self) -> list[bytes]:
        return list(VALID)

    def check(self, data: bytes) -> None:
        whole = _requests(data, [])
        # Chunking chosen from the input itself, so a replay cuts it the same way.
        rng = random.Random(hashlib.sha256(data).digest())
        cuts = sorted(rng.sample(range(len(data) + 1), min(len(data), rng.randrange(1, 8))))
        assert _same(_requests(data, cuts), whole), "requests depend on how the bytes arrived"
        snapshot = DeviceSnapshot()
        for request in whole:
            if isinstance(request, GetRequest):
                format_get(snapshot)
            elif isinstance(request, SetRequest):
                try:
                    ops = parse_set(request.lines)
                    snapshot = apply_to_snapshot(snapshot, ops)
                except UapiError as exc:
                    assert exc.errno > 0
                    assert format_set_reply(exc).startswith(f"errno=-{exc.errno}\n")
                format_get(snapshot)
