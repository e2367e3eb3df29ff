"""wg-quick configuration files: parsing and validation, with errors that name file:line:field."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from wiretun.ifname import wg_quick_ifname_problem
from wiretun.wireguard.crypto import KEY_LEN
from wiretun.wireguard.events import Endpoint

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

_DIGITS_RE = re.compile(r"[0-9]+")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?")
_TABLE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
# Anything shaped like a base64 key; messages quote bad lines, which may hold a PrivateKey.
_KEYLIKE_RE = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")
# wg-quick's test for a DNS= item that is a server (else it is a search domain).
_DNS_SERVER_RE = re.compile(r"[0-9.]+|.*:.*")


@dataclass(frozen=True, slots=True)
class ConfigWarning:
    """Something accepted but worth telling the user (unsupported key, odd permissions...)."""

    filename: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.filename if self.line is None else f"{self.filename}:{self.line}"
        return f"{where}: {self.message}"


class ConfigError(ValueError):
    """An invalid configuration; the message names the file, line and field."""

    def __init__(
        self, filename: str, line: int | None, field_name: str | None, message: str
    ) -> None:
        self.filename = filename
        message = _KEYLIKE_RE.sub("<key>", message)
        field_name = None if field_name is None else _KEYLIKE_RE.sub("<key>", field_name)
        self.line = line
        self.field = field_name
        where = filename if line is None else f"{filename}:{line}"
        super().__init__(
            f"{where}: {field_name}: {message}" if field_name else f"{where}: {message}"
        )


@dataclass(frozen=True, slots=True)
class InterfaceConfig:
    """The `[Interface]` section. `fwmark` 0 means off; `table` is "auto", "off", a number
    or a routing table name. The hooks are wg-quick's bash snippets, verbatim (`%i` not yet
    replaced); `dns` holds the servers of DNS=, `dns_search` its other items."""

    name: str
    private_key: bytes = field(repr=False)
    listen_port: int | None = None
    addresses: tuple[IPInterface, ...] = ()
    mtu: int | None = None
    fwmark: int | None = None
    table: int | str = "auto"
    table_given: bool = False
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    pre_up: tuple[str, ...] = ()
    post_up: tuple[str, ...] = ()
    pre_down: tuple[str, ...] = ()
    post_down: tuple[str, ...] = ()
    save_config: bool = False

    @property
    def public_key(self) -> bytes:
        key = X25519PrivateKey.from_private_bytes(self.private_key).public_key()
        return key.public_bytes_raw()


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """One `[Peer]` section. `persistent_keepalive` None means off."""

    public_key: bytes
    preshared_key: bytes | None = field(default=None, repr=False)
    allowed_ips: tuple[IPNetwork, ...] = ()
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None


@dataclass(frozen=True, slots=True)
class TunnelConfig:
    interface: InterfaceConfig
    peers: tuple[PeerConfig, ...]
    warnings: tuple[ConfigWarning, ...] = ()


class _FieldError(Exception):
    """A bad value; the parser adds file, line and field."""


def parse_key(value: str) -> bytes:
    """A WireGuard key in base64 (44 characters, canonical, 32 bytes)."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    # Re-encoding rejects non-canonical trailing bits, as wg's own decoder does.
    if len(raw) != KEY_LEN or base64.b64encode(raw).decode() != value:
        raise _FieldError("not a valid key (base64 of 32 bytes)")
    return raw


def _parse_uint(value: str, maximum: int, what: str, minimum: int = 0) -> int:
    number = int(value) if _DIGITS_RE.fullmatch(value) else -1
    if not minimum <= number <= maximum:
        raise _FieldError(f"{value!r} is not a valid {what} ({minimum}..{maximum})")
    return number


def parse_endpoint(value: str) -> Endpoint:
    """`host:port`, `[v6]:port` as (host, port); the host may be a name (resolved later,
    by resolve_endpoint)."""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise _FieldError(f"{value!r} is not host:port or [IPv6]:port")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _FieldError(f"{host!r} in {value!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise _FieldError(f"{value!r} is not host:port or [IPv6]:port")
        if ":" in host:
            raise _FieldError(f"{value!r}: write an IPv6 endpoint as [address]:port")
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise _FieldError(f"{host!r} in {value!r} is not an IPv4 address") from None
        elif _HOSTNAME_RE.fullmatch(host) is None:
            raise _FieldError(f"{host!r} in {value!r} is not an IP address or hostname")
    return host, _parse_uint(port_text, 65535, "port", minimum=1)


def resolve_endpoint(host: str, port: int) -> Endpoint:
    """Resolve a hostname (or normalise an IP literal) to the first UDP address.

    Raises socket.gaierror (an OSError) when the name does not resolve.
    """
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    for family, _type, _proto, _canon, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            return str(sockaddr[0]), int(sockaddr[1])
    raise socket.gaierror(socket.EAI_ADDRFAMILY, f"no IPv4 or IPv6 address for {host!r}")


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@dataclass
class _InterfaceDraft:
    line: int
    private_key: bytes | None = field(default=None, repr=False)
    listen_port: int | None = None
    addresses: list[IPInterface] = field(default_factory=list)
    mtu: int | None = None
    fwmark: int | None = None
    table: int | str = "auto"
    table_given: bool = False
    dns: list[str] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    hooks: dict[str, list[str]] = field(default_factory=dict)
    save_config: bool = False
    seen: set[str] = field(default_factory=set)


@dataclass
class _PeerDraft:
    line: int
    public_key: bytes | None = None
    public_key_line: int = 0
    preshared_key: bytes | None = field(default=None, repr=False)
    allowed_ips: list[IPNetwork] = field(default_factory=list)
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None
    seen: set[str] = field(default_factory=set)


class _Parser:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.lineno = 0
        self.interface: _InterfaceDraft | None = None
        self.peers: list[_PeerDraft] = []
        self.peer_lines: dict[bytes, int] = {}  # public key -> its peer's line (10k peers)
        self.section: str | None = None
        self.warnings: list[ConfigWarning] = []
        # lower-case key -> (spelling in messages, handler, may repeat)
        self.iface_fields: dict[str, tuple[str, Callable[[str], None], bool]] = {
            "privatekey": ("PrivateKey", self._private_key, False),
            "listenport": ("ListenPort", self._listen_port, False),
            "address": ("Address", self._address, True),
            "mtu": ("MTU", self._mtu, False),
            "fwmark": ("FwMark", self._fwmark, False),
            "table": ("Table", self._table, False),
            "dns": ("DNS", self._dns, True),
            "preup": ("PreUp", self._hook("preup"), True),
            "postup": ("PostUp", self._hook("postup"), True),
            "predown": ("PreDown", self._hook("predown"), True),
            "postdown": ("PostDown", self._hook("postdown"), True),
            "saveconfig": ("SaveConfig", self._save_config, False),
        }
        self.peer_fields: dict[str, tuple[str, Callable[[str], None], bool]] = {
            "publickey": ("PublicKey", self._public_key, False),
            "presharedkey": ("PresharedKey", self._preshared_key, False),
            "allowedips": ("AllowedIPs", self._allowed_ips, True),
            "endpoint": ("Endpoint", self._endpoint, False),
            "persistentkeepalive": ("PersistentKeepalive", self._keepalive, False),
        }

    @property
    def iface(self) -> _InterfaceDraft:
        assert self.interface is not None
        return self.interface

    def error(self, field_name: str | None, message: str, line: int | None = None) -> ConfigError:
        lineno = self.lineno if line is None else line
        return ConfigError(self.filename, lineno, field_name, message)

    def warn(self, message: str, line: int | None = None) -> None:
        lineno = self.lineno if line is None else line
        self.warnings.append(ConfigWarning(self.filename, lineno, message))

    def feed_line(self, raw: str) -> None:
        text = raw.split("#", 1)[0].strip()
        if not text:
            return
        if text.startswith("["):
            self._section(text)
            return
        key, sep, value = text.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise self.error(None, f"expected 'Key = Value' or a [Section], got {text!r}")
        if self.section is None:
            raise self.error(None, f"{key!r} outside of an [Interface] or [Peer] section")
        lower = key.lower()
        if self.section == "Interface":
            fields, seen = self.iface_fields, self.iface.seen
        else:
            fields, seen = self.peer_fields, self.peers[-1].seen
        label = f"[{self.section}] {key}"
        if lower not in fields:
            raise self.error(label, "unknown key")
        name, handler, repeatable = fields[lower]
        label = f"[{self.section}] {name}"
        if lower in seen and not repeatable:
            raise self.error(label, "given more than once in this section")
        seen.add(lower)
        try:
            handler(value)
        except _FieldError as exc:
            raise self.error(label, str(exc)) from None

    def _section(self, text: str) -> None:
        header = text.lower().replace(" ", "")
        if header == "[interface]":
            if self.interface is not None:
                raise self.error(
                    None, f"second [Interface] section (the first is at line {self.interface.line})"
                )
            self.interface = _InterfaceDraft(self.lineno)
            self.section = "Interface"
        elif header == "[peer]":
            self.peers.append(_PeerDraft(self.lineno))
            self.section = "Peer"
        else:
            raise self.error(None, f"unknown section {text!r} (expected [Interface] or [Peer])")

    # [Interface] fields

    def _private_key(self, value: str) -> None:
        try:
            self.iface.private_key = parse_key(value)
        except _FieldError:
            # Never echo a private key back, not even a malformed one.
            raise _FieldError("not a valid key (base64 of 32 bytes)") from None

    def _listen_port(self, value: str) -> None:
        self.iface.listen_port = _parse_uint(value, 65535, "port")

    def _address(self, value: str) -> None:
        for item in _split_list(value):
            try:
                self.iface.addresses.append(ipaddress.ip_interface(item))
            except ValueError:
                raise _FieldError(f"{item!r} is not a valid address") from None

    def _mtu(self, value: str) -> None:
        self.iface.mtu = _parse_uint(value, 65535, "MTU", minimum=68)

    def _fwmark(self, value: str) -> None:
        if value.lower() == "off":
            self.iface.fwmark = 0
            return
        try:
            mark = int(value, 16) if value.lower().startswith("0x") else int(value, 10)
        except ValueError:
            mark = -1
        if not re.fullmatch(r"0[xX][0-9a-fA-F]+|[0-9]+", value) or not 0 <= mark <= 0xFFFFFFFF:
            raise _FieldError(f"{value!r} is neither off nor 0..0xffffffff")
        self.iface.fwmark = mark

    def _dns(self, value: str) -> None:
        for item in _split_list(value.replace(" ", ",")):
            if _DNS_SERVER_RE.fullmatch(item):
                try:
                    self.iface.dns.append(str(ipaddress.ip_address(item)))
                except ValueError:
                    raise _FieldError(f"{item!r} is not a valid DNS server address") from None
            elif _HOSTNAME_RE.fullmatch(item):
                self.iface.dns_search.append(item)
            else:
                raise _FieldError(f"{item!r} is neither a DNS server address nor a search domain")

    def _hook(self, key: str) -> Callable[[str], None]:
        def add(value: str) -> None:
            if value:  # wg-quick would run an empty snippet: a no-op
                self.iface.hooks.setdefault(key, []).append(value)

        return add

    def _save_config(self, value: str) -> None:
        lower = value.lower()
        if lower not in ("true", "false"):
            raise _FieldError(f"{value!r} is neither true nor false")
        self.iface.save_config = lower == "true"

    def _table(self, value: str) -> None:
        self.iface.table_given = True
        lower = value.lower()
        if lower in ("off", "auto"):
            self.iface.table = lower
        elif _DIGITS_RE.fullmatch(value):
            self.iface.table = _parse_uint(value, 0xFFFFFFFF, "routing table")
        elif _TABLE_NAME_RE.fullmatch(value):
            self.iface.table = value
        else:
            raise _FieldError(f"{value!r} is neither off, auto, a table number nor a table name")

    # [Peer] fields

    def _public_key(self, value: str) -> None:
        key = parse_key(value)
        other = self.peer_lines.setdefault(key, self.peers[-1].line)
        if other != self.peers[-1].line:
            raise _FieldError(f"duplicate peer: the peer at line {other} has the same public key")
        self.peers[-1].public_key = key
        self.peers[-1].public_key_line = self.lineno

    def _preshared_key(self, value: str) -> None:
        try:
            self.peers[-1].preshared_key = parse_key(value)
        except _FieldError:
            raise _FieldError("not a valid key (base64 of 32 bytes)") from None

    def _allowed_ips(self, value: str) -> None:
        for item in _split_list(value):
            try:
                given = ipaddress.ip_interface(item)
            except ValueError:
                raise _FieldError(f"{item!r} is not a valid network") from None
            network = given.network
            if given.ip != network.network_address:
                # wg accepts and masks these; say so, as wg does.
                self.warn(f"[Peer] AllowedIPs: {item!r} has host bits set; using {network}")
            self.peers[-1].allowed_ips.append(network)

    def _endpoint(self, value: str) -> None:
        self.peers[-1].endpoint = parse_endpoint(value)

    def _keepalive(self, value: str) -> None:
        if value.lower() == "off":
            self.peers[-1].persistent_keepalive = None
            return
        seconds = _parse_uint(value, 65535, "keepalive interval in seconds")
        self.peers[-1].persistent_keepalive = seconds or None

    def finish(self, name: str) -> TunnelConfig:
        if self.interface is None:
            raise ConfigError(self.filename, None, None, "no [Interface] section")
        if self.interface.private_key is None:
            raise self.error("[Interface] PrivateKey", "missing", line=self.interface.line)
        interface = InterfaceConfig(
            name=name,
            private_key=self.interface.private_key,
            listen_port=self.interface.listen_port,
            addresses=tuple(self.interface.addresses),
            mtu=self.interface.mtu,
            fwmark=self.interface.fwmark,
            table=self.interface.table,
            table_given=self.interface.table_given,
            dns=tuple(self.interface.dns),
            dns_search=tuple(self.interface.dns_search),
            pre_up=tuple(self.interface.hooks.get("preup", ())),
            post_up=tuple(self.interface.hooks.get("postup", ())),
            pre_down=tuple(self.interface.hooks.get("predown", ())),
            post_down=tuple(self.interface.hooks.get("postdown", ())),
            save_config=self.interface.save_config,
        )
        own_public = interface.public_key
        peers: list[PeerConfig] = []
        owner: dict[IPNetwork, int] = {}
        for draft in self.peers:
            if draft.public_key is None:
                raise self.error("[Peer] PublicKey", "missing", line=draft.line)
            if draft.public_key == own_public:
                raise self.error(
                    "[Peer] PublicKey",
                    "is this interface's own public key",
                    line=draft.public_key_line,
                )
            for network in draft.allowed_ips:
                if network in owner and owner[network] != draft.line:
                    self.warn(
                        f"[Peer] AllowedIPs: {network} is also claimed by the peer at line "
                        f"{owner[network]}; the later peer gets it",
                        line=draft.line,
                    )
                owner[network] = draft.line
            peers.append(
                PeerConfig(
                    public_key=draft.public_key,
                    preshared_key=draft.preshared_key,
                    allowed_ips=tuple(dict.fromkeys(draft.allowed_ips)),
                    endpoint=draft.endpoint,
                    persistent_keepalive=draft.persistent_keepalive,
                )
            )
        return TunnelConfig(interface, tuple(peers), tuple(self.warnings))


def _name_from_filename(filename: str) -> str:
    return Path(filename).name.removesuffix(".conf")


def parse_config(text: str, filename: str, *, name: str | None = None) -> TunnelConfig:
    """Parse wg-quick config text. The interface name is `name`, or else the file name
    without `.conf` (as wg-quick does). Raises ConfigError."""
    ifname = _name_from_filename(filename) if name is None else name
    problem = wg_quick_ifname_problem(ifname)
    if problem is not None:
        raise ConfigError(
            filename, None, None, f"{ifname!r} is not a valid interface name: {problem}"
        )
    # A UTF-8 byte order mark (Windows editors write one) is not part of the first line.
    text = text.removeprefix("\ufeff")
    parser = _Parser(filename)
    for lineno, raw in enumerate(text.splitlines(), start=1):
        parser.lineno = lineno
        parser.feed_line(raw)
    return parser.finish(ifname)


def load_config(path: str | os.PathLike[str], *, name: str | None = None) -> TunnelConfig:
    """Read and parse a wg-quick config file; warns when it is readable by group or others.
    Raises ConfigError (an OSError, if any, is its __cause__)."""
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read()
    except OSError as exc:
        raise ConfigError(filename, None, None, f"cannot read: {exc.strerror}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(filename, line, None, "not valid UTF-8") from exc
    config = parse_config(text, filename, name=name)
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warning = ConfigWarning(
            filename,
            None,
            f"contains a PrivateKey and is readable by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it",
        )
        config = TunnelConfig(config.interface, config.peers, (*config.warnings, warning))
    return config
