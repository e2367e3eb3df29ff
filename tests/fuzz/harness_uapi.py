"""UAPI requests: the byte stream splitter, the streaming set parser and the live backend
on arbitrary and mutated input.

Only UapiProtocolError (from the reader: close the connection) and UapiError (from a set:
answer with its errno) may escape. The reader must give the same requests however the
bytes are chunked. Each set is parsed in pieces (as the server does, cut where the input
says) and applied operation by operation both to the reference semantics (a snapshot) and
to the live backend `wiretun up` serves, a DeviceBackend over a real wireguard Device: the
two must agree after every request (key, mark, peers in order with their preshared key,
endpoint, keepalive and allowed IPs), and `get` must format for both. The backend refuses a
zero private key (wiretun needs one): the request stops there on both sides."""

from __future__ import annotations

import hashlib
import itertools
import random
import weakref

from fuzz.mutate import TEXT_MUTATORS
from fuzz.runner import Harness
from wiretun.tunnel.backend import DeviceBackend
from wiretun.tunnel.uapi_protocol import (
    BlockRecord,
    DeviceSnapshot,
    GetRequest,
    SetOperation,
    SetParser,
    SetRequest,
    UapiError,
    UapiProtocolError,
    UapiRequestReader,
    apply_to_snapshot,
    format_get,
    format_set_reply,
    parse_set,
)
from wiretun.wireguard.device import Device

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
    # A new peer takes an allowed IP, then update_only=true removes it (and the IP with it).
    (
        f"set=1\npublic_key={_KEY2}\nallowed_ip=10.0.0.0/24\n\n"
        f"set=1\npublic_key={_KEY3}\nallowed_ip=10.0.0.0/24\nupdate_only=true\n"
        "allowed_ip=10.1.0.0/24\n\nget=1\n\n"
    ).encode(),
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


_PRIVATE = bytes.fromhex("58" * 31 + "40")
_PORT = 51820
_ANY_PORT = 40000  # what the fake rebind "binds" for listen_port=0


def _normal(snapshot: DeviceSnapshot) -> object:
    """What both sides must agree on (allowed IPs as sets: their order is each one's own)."""
    return (
        snapshot.private_key,
        snapshot.fwmark,
        [
            (p.public_key, p.preshared_key, p.endpoint, p.persistent_keepalive,
             frozenset(p.allowed_ips))
            for p in snapshot.peers
        ],
    )  # fmt: skip


class _Live:
    """The live backend and the reference, side by side."""

    def __init__(self) -> None:
        self.device = Device(_PRIVATE, listen_port=_PORT)
        self.backend = DeviceBackend(
            self.device, now=lambda: 100.0, rebind=lambda port: port or _ANY_PORT
        )
        self.model = DeviceSnapshot(private_key=_PRIVATE, listen_port=_PORT)
        self.blocks: BlockRecord = weakref.WeakKeyDictionary()

    def apply(self, ops: list[SetOperation]) -> UapiError | None:
        """One by one on both; the first the backend refuses stops the rest on both."""
        for op in ops:
            try:
                self.backend.apply([op])
            except UapiError as exc:
                return exc
            self.model = apply_to_snapshot(self.model, [op], self.blocks)
        return None

    def compare(self) -> None:
        got = self.backend.get_snapshot()
        assert _normal(got) == _normal(self.model), "the live backend and the reference differ"
        if self.model.listen_port:
            assert got.listen_port == self.model.listen_port
        assert "".join(self.backend.get_pieces()) == format_get(got)
        format_get(self.model)


def _pieces(lines: tuple[str, ...], rng: random.Random) -> list[tuple[str, ...]]:
    cuts = sorted(rng.sample(range(len(lines) + 1), min(len(lines), rng.randrange(0, 4))))
    edges = [0, *cuts, len(lines)]
    return [lines[a:b] for a, b in itertools.pairwise(edges)]


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
        live = _Live()
        for request in whole:
            if isinstance(request, GetRequest):
                live.compare()
            elif isinstance(request, SetRequest):
                parser = SetParser()
                ops: list[SetOperation] = []
                error: UapiError | None = None
                for piece in _pieces(request.lines, rng):
                    got, err = parser.feed(piece)
                    ops += got
                    error = error or err
                ops += parser.finish()
                try:
                    whole_ops = parse_set(request.lines)
                except UapiError as exc:
                    assert error is not None and exc.errno == error.errno
                    assert format_set_reply(exc).startswith(f"errno=-{exc.errno}\n")
                else:
                    assert error is None
                    # Equal but for a peer with over MAX_DRAFT_NETWORKS IPs, cut in several.
                    if len(request.lines) < 1024:
                        assert ops == whole_ops, "the set parsed in pieces differs"
                refused = live.apply(ops)
                assert refused is None or refused.errno > 0
                live.compare()
