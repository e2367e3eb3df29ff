"""The WireGuard userspace configuration protocol (UAPI, `get=1` / `set=1`) without I/O."""

from __future__ import annotations

import errno as errno_codes
import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field, replace

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from wiretun.tunnel.config import IPNetwork, TunnelConfig, resolve_endpoint
from wiretun.wireguard.crypto import KEY_LEN
from wiretun.wireguard.events import Endpoint
from wiretun.wireguard.keys import keyed_repr

ZERO_KEY = bytes(KEY_LEN)
# wireguard-go answers errors it cannot classify with -55 (ENOANO).
ERRNO_UNKNOWN = errno_codes.ENOANO
# Same as Go's bufio.Scanner default token limit, which bounds wireguard-go's lines.
MAX_LINE = 64 * 1024
# A set's lines are handed on (parsed and applied) in pieces as they arrive, as wireguard-go
# applies each line as it reads it: no request size limit, nothing buffered beyond a read.
# A peer with more allowed IPs than this is applied in several PeerUpdates.
MAX_DRAFT_NETWORKS = 1024
STATS_OP = b"wiretun-stats=1"
# The first line of a get reply from a device that answers STATS_OP: clients ask for the
# counters only after seeing it (wireguard-go logs an error and hangs up on an unknown
# request). `wg` and wgctrl ignore device keys they do not know.
STATS_MARKER = "wiretun_stats=1\n"

_HEX_KEY_RE = re.compile(r"[0-9a-fA-F]{64}")
_UINT_RE = re.compile(r"[0-9]+")
# Longer values are not quoted in errors: a 64-hex-digit key never fits (an IPv6
# endpoint or prefix does).
_MAX_SHOWN = 48
_PREFIX_RE = re.compile(r"([0-9a-fA-F:.]+)/(0|[1-9][0-9]{0,2})")


class UapiError(Exception):
    """A failed operation; `errno` is positive here and sent negated, as wireguard-go does."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno

    @property
    def wire_errno(self) -> int:
        return -self.errno


class UapiProtocolError(Exception):
    """The client sent something that is not an operation; the connection is closed."""


# ---- set operations (what `set=1` asks for), in the order given ----


@dataclass(frozen=True, slots=True)
class SetPrivateKey:
    """32 zero bytes remove the key."""

    private_key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SetListenPort:
    port: int


@dataclass(frozen=True, slots=True)
class SetFwmark:
    fwmark: int


@dataclass(frozen=True, slots=True)
class ReplacePeers:
    """Remove every peer (later operations in the same set may add some back)."""


class PeerBlock:
    """One `public_key=` block of a set whose lines became several PeerUpdates, by identity.

    wireguard-go creates a new peer at the public_key line and removes it again at a later
    `update_only=true` (the allowed IPs it took from others stay gone). The block's first
    update records in the applier's BlockRecord whether it created the peer, and a remove
    naming the block removes only a peer it created: the updates may be applied in several
    calls (a large set streams), so the applier keeps the record, never the operation."""

    __slots__ = ("__weakref__",)


# What each PeerBlock's first update found: True if it created the peer. A backend keeps one
# (weakly keyed: a block is forgotten with the operations and parser that name it).
BlockRecord = MutableMapping[PeerBlock, bool]


@dataclass(frozen=True, slots=True, repr=False)
class PeerUpdate:
    """Everything one `public_key=` block asks for. None means "leave unchanged";
    a zero preshared key removes it; keepalive 0 turns it off. Allowed-ips are removed
    first, then added (an IP added elsewhere is taken from its previous peer).

    `block`: set on the first update of a block cut in several (see PeerBlock), which
    records whether it created the peer, and on a `remove` that applies only if it did."""

    __repr__ = keyed_repr
    public_key: bytes
    remove: bool = False
    update_only: bool = False
    preshared_key: bytes | None = field(default=None, repr=False)
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None
    replace_allowed_ips: bool = False
    add_allowed_ips: tuple[IPNetwork, ...] = ()
    remove_allowed_ips: tuple[IPNetwork, ...] = ()
    block: PeerBlock | None = field(default=None, compare=False, repr=False)


SetOperation = SetPrivateKey | SetListenPort | SetFwmark | ReplacePeers | PeerUpdate


# ---- device state for `get=1` ----


@dataclass(frozen=True, slots=True, repr=False)
class PeerSnapshot:
    __repr__ = keyed_repr
    public_key: bytes
    preshared_key: bytes | None = field(default=None, repr=False)
    endpoint: Endpoint | None = None
    last_handshake_ns: int = 0  # wall clock (Unix epoch) nanoseconds; 0 = never
    tx_bytes: int = 0
    rx_bytes: int = 0
    persistent_keepalive: int = 0
    allowed_ips: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    private_key: bytes | None = field(default=None, repr=False)
    listen_port: int = 0
    fwmark: int = 0
    peers: tuple[PeerSnapshot, ...] = ()


# ---- requests on a connection ----


@dataclass(frozen=True, slots=True)
class GetRequest:
    """`get=1`; `error` is set when the blank line after it was something else."""

    error: UapiError | None = None


@dataclass(frozen=True, slots=True)
class StatsRequest:
    """`wiretun-stats=1`: wiretun's own request (wireguard-go closes the connection on it),
    answered with `stats=<one line of JSON>` (wiretun.tunnel.stats.TunnelStats) before the
    errno; `error` as for GetRequest."""

    error: UapiError | None = None


@dataclass(frozen=True, slots=True)
class SetRequest:
    """Lines of a `set=1` (without the terminating blank line): all of them, or, while the
    request is still arriving, the next piece (`final` False; more pieces follow)."""

    lines: tuple[str, ...]
    final: bool = True


class UapiRequestReader:
    """Splits the bytes of one connection into requests. Lines are bounded; a set is handed
    out in pieces as its lines arrive (never more than one read's worth held)."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._set_lines: list[str] | None = None
        self._max_line = max_line

    def feed(self, data: bytes) -> None:
        if self._pos > 4096 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def idle(self) -> bool:
        """True between requests with nothing buffered (an EOF here is a clean close)."""
        return self._set_lines is None and self._pos == len(self._buf)

    def _line(self) -> bytes | None:
        nl = self._buf.find(b"\n", self._pos)
        if nl < 0:
            if len(self._buf) - self._pos > self._max_line:
                raise UapiProtocolError("line too long")
            return None
        if nl - self._pos > self._max_line:
            raise UapiProtocolError("line too long")
        line = bytes(self._buf[self._pos : nl])
        self._pos = nl + 1
        return line

    def next_request(self) -> GetRequest | SetRequest | StatsRequest | None:
        """The next request (or piece of a set), or None until more bytes arrive.
        Raises UapiProtocolError when the connection should be closed."""
        while True:
            if self._set_lines is None:
                start = self._pos
                op = self._line()
                if op is None:
                    return None
                if op in (b"get=1", STATS_OP):
                    if self._pos >= len(self._buf):
                        self._pos = start  # wait for the byte after the newline
                        return None
                    after = self._buf[self._pos]
                    self._pos += 1
                    kind = GetRequest if op == b"get=1" else StatsRequest
                    if after == ord("\n"):
                        return kind()
                    return kind(
                        UapiError(errno_codes.EINVAL, f"trailing character in get: {after!r}")
                    )
                if op == b"set=1":
                    self._set_lines = []
                    continue
                # Quote only a short name, never the value: the line may be a key sent
                # without `set=1` (or a bare key with no '=').
                name = op.partition(b"=")[0]
                shown = repr(name) if len(name) <= 16 else f"<{len(name)} bytes>"
                raise UapiProtocolError(f"invalid operation {shown}")
            line = self._line()
            if line is None:
                if self._set_lines:  # what arrived so far goes on now
                    piece = SetRequest(tuple(self._set_lines), final=False)
                    self._set_lines = []
                    return piece
                return None
            if line.endswith(b"\r"):  # as Go's line scanner does
                line = line[:-1]
            if not line:
                request = SetRequest(tuple(self._set_lines))
                self._set_lines = None
                return request
            self._set_lines.append(line.decode("utf-8", "replace"))


# ---- parsing `set=1` ----


def _hex_key(value: str, what: str) -> bytes:
    if _HEX_KEY_RE.fullmatch(value) is None:
        raise UapiError(errno_codes.EINVAL, f"{what}: not 64 hex digits")
    return bytes.fromhex(value)


def _shown(value: str) -> str:
    """A value for an error message: a key pasted into the wrong field is not quoted."""
    return repr(value) if len(value) <= _MAX_SHOWN else f"<{len(value)} characters>"


def _uint(value: str, bits: int, what: str) -> int:
    if _UINT_RE.fullmatch(value) is None or int(value) >= 1 << bits:
        raise UapiError(errno_codes.EINVAL, f"{what}: {_shown(value)} is not a {bits}-bit number")
    return int(value)


def _true(value: str, what: str) -> None:
    if value != "true":
        raise UapiError(errno_codes.EINVAL, f"{what}: invalid value {_shown(value)}")


def parse_endpoint(value: str) -> Endpoint:
    """`a.b.c.d:port` or `[v6]:port`, IP literals only (as wireguard-go's ParseAddrPort)."""
    bracketed = value.startswith("[")
    if bracketed:
        host, sep, rest = value[1:].partition("]")
        ok = bool(sep) and rest.startswith(":")
        port = rest[1:]
    else:
        host, sep, port = value.rpartition(":")
        ok = bool(sep) and ":" not in host
    bad = UapiError(errno_codes.EINVAL, f"endpoint: {_shown(value)} is not ip:port")
    if not ok:
        raise bad
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    try:
        address = ipaddress.IPv6Address(host) if bracketed else ipaddress.IPv4Address(host)
    except ValueError:
        raise bad from None
    return str(address), _uint(port, 16, "endpoint port")


def parse_prefix(value: str) -> IPNetwork:
    """`ip/bits` (bits required); host bits are masked off, as wireguard-go's trie does."""
    bad = UapiError(errno_codes.EINVAL, f"allowed_ip: {_shown(value)} is not ip/cidr")
    if _PREFIX_RE.fullmatch(value) is None:
        raise bad
    try:
        return ipaddress.ip_interface(value).network
    except ValueError:
        raise bad from None


@dataclass
class _PeerDraft:
    public_key: bytes
    remove: bool = False
    update_only: bool = False
    preshared_key: bytes | None = field(default=None, repr=False)
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None
    replace_allowed_ips: bool = False
    add: dict[IPNetwork, None] = field(default_factory=dict)
    drop: dict[IPNetwork, None] = field(default_factory=dict)

    def changes(self) -> bool:
        """True if the lines so far ask for anything beyond the peer itself."""
        return bool(
            self.preshared_key is not None or self.endpoint is not None
            or self.persistent_keepalive is not None or self.replace_allowed_ips
            or self.add or self.drop
        )  # fmt: skip

    def freeze(self, block: PeerBlock | None = None) -> PeerUpdate:
        if self.remove:
            return PeerUpdate(self.public_key, remove=True)
        return PeerUpdate(
            block=block,
            public_key=self.public_key,
            update_only=self.update_only,
            preshared_key=self.preshared_key,
            endpoint=self.endpoint,
            persistent_keepalive=self.persistent_keepalive,
            replace_allowed_ips=self.replace_allowed_ips,
            add_allowed_ips=tuple(self.add),
            remove_allowed_ips=tuple(self.drop),
        )


def _device_line(key: str, value: str) -> SetOperation:
    if key == "private_key":
        return SetPrivateKey(_hex_key(value, "private_key"))
    if key == "listen_port":
        return SetListenPort(_uint(value, 16, "listen_port"))
    if key == "fwmark":
        return SetFwmark(_uint(value, 32, "fwmark"))
    if key == "replace_peers":
        _true(value, "replace_peers")
        return ReplacePeers()
    raise UapiError(errno_codes.EINVAL, f"invalid UAPI device key: {_shown(key)}")


def _peer_line(peer: _PeerDraft, key: str, value: str) -> None:
    if key == "remove":
        _true(value, "remove")
        peer.remove = True
    elif key == "update_only":
        _true(value, "update_only")
        peer.update_only = True
    elif key == "preshared_key":
        peer.preshared_key = _hex_key(value, "preshared_key")
    elif key == "endpoint":
        peer.endpoint = parse_endpoint(value)
    elif key == "persistent_keepalive_interval":
        peer.persistent_keepalive = _uint(value, 16, "persistent_keepalive_interval")
    elif key == "replace_allowed_ips":
        _true(value, "replace_allowed_ips")
        # wireguard-go applies lines in order: a replace undoes allowed_ip lines before it.
        peer.replace_allowed_ips = True
        peer.add.clear()
        peer.drop.clear()
    elif key == "allowed_ip":
        removing = value.startswith("-")
        network = parse_prefix(value[1:] if removing else value)
        (peer.add if removing else peer.drop).pop(network, None)
        (peer.drop if removing else peer.add)[network] = None
    elif key == "protocol_version":
        if value != "1":
            raise UapiError(errno_codes.EINVAL, f"invalid protocol version: {_shown(value)}")
    else:
        raise UapiError(errno_codes.EINVAL, f"invalid UAPI peer key: {_shown(key)}")


class SetParser:
    """The lines of one `set=1` as typed operations, fed in pieces as they arrive.

    `feed` returns the operations its lines completed and the UapiError of a bad line (EPROTO
    for a line without '=', EINVAL for an unknown key or bad value), if any: the operations
    are then everything before that line (the open peer's included), as wireguard-go has
    applied those when it stops at a bad line; nothing after it counts. `finish` closes the
    request. A peer's lines become one PeerUpdate, or several once it has more than
    MAX_DRAFT_NETWORKS allowed IPs pending (the later ones update the peer the first made),
    or when `update_only=true` follows allowed IPs (see PeerBlock).
    """

    def __init__(self, max_networks: int = MAX_DRAFT_NETWORKS) -> None:
        self._peer: _PeerDraft | None = None
        # The open block's PeerBlock once an update of it went out that may create the peer;
        # whether an `update_only=true` line may still remove a peer the block created.
        self._block: PeerBlock | None = None
        self._may_create = False
        self._number = 0
        self._max_networks = max_networks
        self.failed = False

    def feed(self, lines: Iterable[str]) -> tuple[list[SetOperation], UapiError | None]:
        if self.failed:
            return [], None  # the rest of a failed request is read and ignored
        ops: list[SetOperation] = []
        try:
            for line in lines:
                self._number += 1
                self._line(line, ops)
        except UapiError as exc:
            self.failed = True
            return ops + self._close(), exc
        return ops, None

    def finish(self) -> list[SetOperation]:
        return [] if self.failed else self._close()

    def _close(self) -> list[SetOperation]:
        peer, self._peer = self._peer, None
        return [] if peer is None else [peer.freeze()]

    def _line(self, line: str, ops: list[SetOperation]) -> None:
        key, sep, value = line.partition("=")
        if not sep:
            # The line itself is not quoted: it might hold a key.
            raise UapiError(errno_codes.EPROTO, f"line {self._number} has no '='")
        peer = self._peer
        if key == "public_key":
            public_key = _hex_key(value, "public_key")
            ops += self._close()
            self._peer = _PeerDraft(public_key)
            self._block, self._may_create = None, True
        elif peer is None:
            ops.append(_device_line(key, value))
        elif not peer.remove:
            if key == "update_only" and self._may_create:
                _true(value, "update_only")
                self._may_create = False
                self._update_only(peer, ops)
                return
            _peer_line(peer, key, value)
            if len(peer.add) + len(peer.drop) >= self._max_networks:
                if self._block is None and self._may_create:
                    self._block = PeerBlock()
                    ops.append(peer.freeze(self._block))
                else:
                    ops.append(peer.freeze())
                # The peer exists now if it was to be created: the rest only updates it.
                self._peer = _PeerDraft(peer.public_key, update_only=True)
        else:
            # After remove=true wireguard-go configures a throwaway peer: check, then ignore.
            _peer_line(_PeerDraft(peer.public_key), key, value)

    def _update_only(self, peer: _PeerDraft, ops: list[SetOperation]) -> None:
        """The block's first `update_only=true`: wireguard-go removes the peer here if the
        block's public_key line created it, and the rest of the block changes nothing."""
        if self._block is None and not peer.add:
            # Nothing done so far outlasts that removal: the whole block is an update of a
            # peer that exists (and nothing for one that does not).
            peer.update_only = True
            return
        # A new peer took allowed IPs from others before it was removed again: those stay
        # gone. What the block asked so far goes out, then the remove if it created the peer.
        block = self._block or PeerBlock()
        if self._block is None or peer.changes():
            ops.append(peer.freeze(None if self._block else block))
        ops.append(PeerUpdate(peer.public_key, remove=True, block=block))
        self._block = block
        self._peer = _PeerDraft(peer.public_key, update_only=True)


def parse_set(lines: Iterable[str]) -> list[SetOperation]:
    """The lines of one whole `set=1` request as typed operations; raises the UapiError of
    the first bad line (see SetParser) instead of returning anything."""
    parser = SetParser()
    ops, error = parser.feed(lines)
    if error is not None:
        raise error
    return ops + parser.finish()


# ---- formatting `get=1` ----


def format_endpoint(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


GET_END = "errno=0\n\n"


def format_get(snapshot: DeviceSnapshot) -> str:
    """The full reply to `get=1`, ending with `errno=0` and the blank line."""
    return "".join(format_get_pieces(snapshot))


def format_get_pieces(snapshot: DeviceSnapshot) -> Iterator[str]:
    """`format_get` in pieces: the device's lines, one piece per peer, GET_END."""
    yield format_device(snapshot)
    for peer in snapshot.peers:
        yield format_peer(peer)
    yield GET_END


def format_device(snapshot: DeviceSnapshot) -> str:
    """The device's lines of a `get=1` reply (its peers not included)."""
    out: list[str] = []
    if snapshot.private_key is not None and snapshot.private_key != ZERO_KEY:
        out.append(f"private_key={snapshot.private_key.hex()}")
    if snapshot.listen_port:
        out.append(f"listen_port={snapshot.listen_port}")
    if snapshot.fwmark:
        out.append(f"fwmark={snapshot.fwmark}")
    return "".join(f"{line}\n" for line in out)


def format_peer(peer: PeerSnapshot) -> str:
    """One peer's lines of a `get=1` reply."""
    out: list[str] = []
    out.append(f"public_key={peer.public_key.hex()}")
    out.append(f"preshared_key={(peer.preshared_key or ZERO_KEY).hex()}")
    out.append("protocol_version=1")
    if peer.endpoint is not None:
        out.append(f"endpoint={format_endpoint(peer.endpoint)}")
    seconds, nanoseconds = divmod(peer.last_handshake_ns, 1_000_000_000)
    out.append(f"last_handshake_time_sec={seconds}")
    out.append(f"last_handshake_time_nsec={nanoseconds}")
    out.append(f"tx_bytes={peer.tx_bytes}")
    out.append(f"rx_bytes={peer.rx_bytes}")
    out.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
    out.extend(f"allowed_ip={network}" for network in peer.allowed_ips)
    return "".join(f"{line}\n" for line in out)


def format_stats(stats_json: str) -> str:
    """The reply to `wiretun-stats=1`: the JSON (one line) and `errno=0`."""
    if "\n" in stats_json:
        raise ValueError("stats JSON must be one line")
    return f"stats={stats_json}\nerrno=0\n\n"


def format_set_reply(error: UapiError | None) -> str:
    return f"errno={0 if error is None else error.wire_errno}\n\n"


# ---- reference semantics ----


def public_key_of(private_key: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


def apply_to_snapshot(
    snapshot: DeviceSnapshot, ops: Iterable[SetOperation], blocks: BlockRecord | None = None
) -> DeviceSnapshot:
    """What `ops` do to a device, as wireguard-go does it: the reference for backends and
    the state of the in-memory backend. Counters and handshake times are kept. `blocks`
    keeps what PeerBlocks found across calls (a set applied in pieces); by default it lasts
    this call."""
    blocks = {} if blocks is None else blocks
    private_key = snapshot.private_key
    listen_port, fwmark = snapshot.listen_port, snapshot.fwmark
    peers = {peer.public_key: peer for peer in snapshot.peers}
    own = public_key_of(private_key) if private_key else None
    for op in ops:
        if isinstance(op, SetPrivateKey):
            private_key = None if op.private_key == ZERO_KEY else op.private_key
            own = public_key_of(private_key) if private_key else None
            peers.pop(own or b"", None)  # a peer cannot be ourselves
        elif isinstance(op, SetListenPort):
            listen_port = op.port
        elif isinstance(op, SetFwmark):
            fwmark = op.fwmark
        elif isinstance(op, ReplacePeers):
            peers.clear()
        elif op.public_key == own:
            continue  # wireguard-go ignores a peer with our own key
        elif op.remove:
            if op.block is None or blocks.get(op.block, False):
                peers.pop(op.public_key, None)
        elif op.public_key in peers or not op.update_only:
            if op.block is not None:
                blocks.setdefault(op.block, op.public_key not in peers)
            peers = _update_peer(peers, op)
    return DeviceSnapshot(private_key, listen_port, fwmark, tuple(peers.values()))


def _update_peer(peers: dict[bytes, PeerSnapshot], op: PeerUpdate) -> dict[bytes, PeerSnapshot]:
    peer = peers.get(op.public_key, PeerSnapshot(op.public_key))
    if op.preshared_key is not None:
        peer = replace(
            peer, preshared_key=None if op.preshared_key == ZERO_KEY else op.preshared_key
        )
    if op.endpoint is not None:
        peer = replace(peer, endpoint=op.endpoint)
    if op.persistent_keepalive is not None:
        peer = replace(peer, persistent_keepalive=op.persistent_keepalive)
    ips = {} if op.replace_allowed_ips else dict.fromkeys(peer.allowed_ips)
    for network in op.remove_allowed_ips:
        ips.pop(network, None)
    ips.update(dict.fromkeys(op.add_allowed_ips))
    peers[op.public_key] = replace(peer, allowed_ips=tuple(ips))
    if op.add_allowed_ips:
        # An allowed IP belongs to one peer: adding it here takes it from the others.
        taken = set(op.add_allowed_ips)
        for key, other in peers.items():
            if key != op.public_key and taken.intersection(other.allowed_ips):
                kept = tuple(n for n in other.allowed_ips if n not in taken)
                peers[key] = replace(other, allowed_ips=kept)
    return peers


def set_operations_from_config(
    config: TunnelConfig,
    resolve: Callable[[str, int], Endpoint] = resolve_endpoint,
) -> list[SetOperation]:
    """The operations that make a device match `config`, as `wg setconf` sends them; endpoint
    hostnames go through `resolve`, which may raise OSError."""
    iface = config.interface
    ops: list[SetOperation] = [
        SetPrivateKey(iface.private_key),
        SetListenPort(iface.listen_port or 0),
        SetFwmark(iface.fwmark or 0),
        ReplacePeers(),
    ]
    for peer in config.peers:
        endpoint = None
        if peer.endpoint is not None:
            host, port = peer.endpoint
            endpoint = resolve(host, port)
        ops.append(
            PeerUpdate(
                public_key=peer.public_key,
                preshared_key=peer.preshared_key,
                endpoint=endpoint,
                persistent_keepalive=peer.persistent_keepalive,
                replace_allowed_ips=True,
                add_allowed_ips=peer.allowed_ips,
            )
        )
    return ops
