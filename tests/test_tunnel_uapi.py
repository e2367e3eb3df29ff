"""UAPI: parse/format against bytes captured from wg, reference semantics, and the server
on a socket in a private directory (no root needed)."""

from __future__ import annotations

import asyncio
import base64
import errno
import ipaddress
import json
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wiretun.testing.uapi import MemoryBackend
from wiretun.tunnel.config import parse_config
from wiretun.tunnel.uapi import UapiInUseError, UapiServer
from wiretun.tunnel.uapi_protocol import (
    STATS_MARKER,
    DeviceSnapshot,
    GetRequest,
    PeerSnapshot,
    PeerUpdate,
    ReplacePeers,
    SetFwmark,
    SetListenPort,
    SetOperation,
    SetParser,
    SetPrivateKey,
    SetRequest,
    StatsRequest,
    UapiError,
    UapiProtocolError,
    UapiRequestReader,
    apply_to_snapshot,
    format_get,
    parse_set,
    set_operations_from_config,
)

# Keys from `wg genkey | tee >(wg pubkey)` and `wg genpsk`, shown in hex as UAPI sends them.
PRIV1 = base64.b64decode("4Cb6HXpToPFrwjVch+a1gI9TS1tXKYn+u4/qWftbuW4=")
PUB1 = base64.b64decode("whfRkAvtsx3Cblt9O//zEeO0QAVTCHmBo8ncjCw23UQ=")
PUB2 = base64.b64decode("BDU8H/VB+PjZSlFV55N3qyOHYXtlNMTngERTvM8aaxA=")
PUB3 = base64.b64decode("CQIGzX+4JggTY8w0ltnu4+Dck78nEkwDeAFtfzhb4QQ=")
PSK = base64.b64decode("m/4R0fZE2a4sckBYGIHe9oI+whU9jRFfo2PkvZktADs=")
PRIV1_HEX = "e026fa1d7a53a0f16bc2355c87e6b5808f534b5b572989febb8fea59fb5bb96e"
PUB2_HEX = "04353c1ff541f8f8d94a5155e79377ab2387617b6534c4e7804453bccf1a6b10"
PUB3_HEX = "090206cd7fb826081363cc3496d9eee3e0dc93bf27124c0378016d7f385be104"
PSK_HEX = "9bfe11d1f644d9ae2c7240581881def6823ec2153d8d115fa363e4bd992d003b"

# Bytes that wireguard-tools v1.0.20210914 wrote to a capturing socket for:
#   wg set NAME peer <PUB2> allowed-ips 10.9.0.0/24 endpoint 127.0.0.1:5555
WG_SET = (
    f"set=1\npublic_key={PUB2_HEX}\nendpoint=127.0.0.1:5555\n"
    "replace_allowed_ips=true\nallowed_ip=10.9.0.0/24\n\n"
).encode()
#   wg set NAME peer <PUB2> remove
WG_REMOVE = f"set=1\npublic_key={PUB2_HEX}\nremove=true\n\n".encode()
#   wg setconf NAME <SETCONF_FILE>
WG_SETCONF = (
    f"set=1\nprivate_key={PRIV1_HEX}\nlisten_port=51820\nfwmark=4660\nreplace_peers=true\n"
    f"public_key={PUB2_HEX}\npreshared_key={PSK_HEX}\nendpoint=[2001:db8::1]:4500\n"
    "persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.0.0.2/32\n"
    f"allowed_ip=fd00:10::2/128\npublic_key={PUB3_HEX}\nreplace_allowed_ips=true\n"
    "allowed_ip=10.1.0.0/16\n\n"
).encode()
SETCONF_FILE = """[Interface]
PrivateKey = 4Cb6HXpToPFrwjVch+a1gI9TS1tXKYn+u4/qWftbuW4=
ListenPort = 51820
FwMark = 0x1234
[Peer]
PublicKey = BDU8H/VB+PjZSlFV55N3qyOHYXtlNMTngERTvM8aaxA=
PresharedKey = m/4R0fZE2a4sckBYGIHe9oI+whU9jRFfo2PkvZktADs=
AllowedIPs = 10.0.0.2/32, fd00:10::2/128
Endpoint = [2001:db8::1]:4500
PersistentKeepalive = 25
[Peer]
PublicKey = CQIGzX+4JggTY8w0ltnu4+Dck78nEkwDeAFtfzhb4QQ=
AllowedIPs = 10.1.0.0/16
"""


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


Request = GetRequest | SetRequest | StatsRequest


def joined(pieces: list[Request]) -> list[Request]:
    """Requests with each set's pieces joined into one final SetRequest."""
    out: list[Request] = []
    lines: list[str] = []
    for request in pieces:
        if not isinstance(request, SetRequest):
            out.append(request)
            continue
        lines += request.lines
        if request.final:
            out.append(SetRequest(tuple(lines)))
            lines = []
    assert not lines, "a set never ended"
    return out


def requests_of(data: bytes) -> list[Request]:
    reader = UapiRequestReader()
    reader.feed(data)
    out: list[Request] = []
    while (request := reader.next_request()) is not None:
        out.append(request)
    assert reader.idle
    return joined(out)


def ops_of(data: bytes) -> list[SetOperation]:
    (request,) = requests_of(data)
    assert isinstance(request, SetRequest)
    return parse_set(request.lines)


# ---- format_get ----


def test_format_get_written_by_hand_from_the_spec() -> None:
    snapshot = DeviceSnapshot(
        private_key=PRIV1,
        listen_port=51820,
        fwmark=4660,
        peers=(
            PeerSnapshot(
                public_key=PUB2,
                preshared_key=PSK,
                endpoint=("2001:db8::1", 4500),
                last_handshake_ns=1_700_000_000_123_456_789,
                tx_bytes=1234,
                rx_bytes=5678,
                persistent_keepalive=25,
                allowed_ips=(net("10.0.0.2/32"), net("fd00:10::2/128")),
            ),
            PeerSnapshot(public_key=PUB3, allowed_ips=(net("10.1.0.0/16"),)),
        ),
    )
    assert format_get(snapshot) == (
        f"private_key={PRIV1_HEX}\n"
        "listen_port=51820\n"
        "fwmark=4660\n"
        f"public_key={PUB2_HEX}\n"
        f"preshared_key={PSK_HEX}\n"
        "protocol_version=1\n"
        "endpoint=[2001:db8::1]:4500\n"
        "last_handshake_time_sec=1700000000\n"
        "last_handshake_time_nsec=123456789\n"
        "tx_bytes=1234\n"
        "rx_bytes=5678\n"
        "persistent_keepalive_interval=25\n"
        "allowed_ip=10.0.0.2/32\n"
        "allowed_ip=fd00:10::2/128\n"
        f"public_key={PUB3_HEX}\n"
        f"preshared_key={'0' * 64}\n"
        "protocol_version=1\n"
        "last_handshake_time_sec=0\n"
        "last_handshake_time_nsec=0\n"
        "tx_bytes=0\n"
        "rx_bytes=0\n"
        "persistent_keepalive_interval=0\n"
        "allowed_ip=10.1.0.0/16\n"
        "errno=0\n"
        "\n"
    )


def test_format_get_of_empty_device() -> None:
    # Unset values are left out, as wireguard-go does; the zero key means "no key".
    assert format_get(DeviceSnapshot()) == "errno=0\n\n"
    assert format_get(DeviceSnapshot(private_key=bytes(32))) == "errno=0\n\n"


# ---- parse_set on captured bytes ----


def test_parse_captured_wg_set() -> None:
    assert ops_of(WG_SET) == [
        PeerUpdate(
            public_key=PUB2,
            endpoint=("127.0.0.1", 5555),
            replace_allowed_ips=True,
            add_allowed_ips=(net("10.9.0.0/24"),),
        )
    ]


def test_parse_captured_wg_remove() -> None:
    assert ops_of(WG_REMOVE) == [PeerUpdate(public_key=PUB2, remove=True)]


def test_parse_captured_setconf_matches_config_translation() -> None:
    expected: list[SetOperation] = [
        SetPrivateKey(PRIV1),
        SetListenPort(51820),
        SetFwmark(4660),
        ReplacePeers(),
        PeerUpdate(
            public_key=PUB2,
            preshared_key=PSK,
            endpoint=("2001:db8::1", 4500),
            persistent_keepalive=25,
            replace_allowed_ips=True,
            add_allowed_ips=(net("10.0.0.2/32"), net("fd00:10::2/128")),
        ),
        PeerUpdate(
            public_key=PUB3, replace_allowed_ips=True, add_allowed_ips=(net("10.1.0.0/16"),)
        ),
    ]
    assert ops_of(WG_SETCONF) == expected
    config = parse_config(SETCONF_FILE, "wt0.conf")
    assert set_operations_from_config(config) == expected


def test_config_translation_resolves_hostnames() -> None:
    config = parse_config(f"{SETCONF_FILE}Endpoint = vpn.example.com:51820\n", "wt0.conf")
    calls: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> tuple[str, int]:
        calls.append((host, port))
        return "192.0.2.7", port

    ops = set_operations_from_config(config, resolve)
    # IP literals go through the resolver too (getaddrinfo normalises them without DNS).
    assert calls == [("2001:db8::1", 4500), ("vpn.example.com", 51820)]
    last = ops[-1]
    assert isinstance(last, PeerUpdate) and last.endpoint == ("192.0.2.7", 51820)


@pytest.mark.parametrize(
    ("lines", "code", "message"),
    [
        (["listen_port"], errno.EPROTO, "line 1 has no '='"),
        (["colour=blue"], errno.EINVAL, "invalid UAPI device key: 'colour'"),
        ([f"public_key={PUB2_HEX}", "colour=blue"], errno.EINVAL, "invalid UAPI peer key"),
        # Device keys after a public_key belong to the peer, where they are unknown.
        ([f"public_key={PUB2_HEX}", "listen_port=1"], errno.EINVAL, "invalid UAPI peer key"),
        (["private_key=abc"], errno.EINVAL, "private_key: not 64 hex digits"),
        ([f"public_key={PUB2_HEX[:-1]}g"], errno.EINVAL, "public_key: not 64 hex digits"),
        ([f"public_key= {PUB2_HEX[1:]}"], errno.EINVAL, "public_key: not 64 hex digits"),
        (["listen_port=65536"], errno.EINVAL, "listen_port: '65536' is not a 16-bit number"),
        (["listen_port=-1"], errno.EINVAL, "is not a 16-bit number"),
        (["listen_port=+1"], errno.EINVAL, "is not a 16-bit number"),
        (["fwmark=4294967296"], errno.EINVAL, "is not a 32-bit number"),
        (["replace_peers=false"], errno.EINVAL, "replace_peers: invalid value 'false'"),
        ([f"public_key={PUB2_HEX}", "remove=yes"], errno.EINVAL, "remove: invalid value"),
        ([f"public_key={PUB2_HEX}", "protocol_version=2"], errno.EINVAL, "protocol version"),
        ([f"public_key={PUB2_HEX}", "endpoint=vpn.example.com:5"], errno.EINVAL, "not ip:port"),
        ([f"public_key={PUB2_HEX}", "endpoint=::1:5"], errno.EINVAL, "not ip:port"),
        ([f"public_key={PUB2_HEX}", "endpoint=[::1]:65536"], errno.EINVAL, "16-bit"),
        ([f"public_key={PUB2_HEX}", "allowed_ip=10.0.0.1"], errno.EINVAL, "not ip/cidr"),
        ([f"public_key={PUB2_HEX}", "allowed_ip=10.0.0.0/33"], errno.EINVAL, "not ip/cidr"),
        ([f"public_key={PUB2_HEX}", "allowed_ip=10.0.0.0/08"], errno.EINVAL, "not ip/cidr"),
        ([f"public_key={PUB2_HEX}", "allowed_ip=--10.0.0.0/8"], errno.EINVAL, "not ip/cidr"),
        # Lines after remove=true are still checked, as wireguard-go checks them.
        ([f"public_key={PUB2_HEX}", "remove=true", "bogus=1"], errno.EINVAL, "peer key"),
    ],
)
def test_parse_set_errors(lines: list[str], code: int, message: str) -> None:
    with pytest.raises(UapiError) as info:
        parse_set(lines)
    assert info.value.errno == code
    assert info.value.wire_errno == -code
    assert message in str(info.value)


def test_parse_set_never_quotes_a_line_that_may_hold_a_key() -> None:
    with pytest.raises(UapiError) as info:
        parse_set([f"private_key {PRIV1_HEX}"])
    assert PRIV1_HEX not in str(info.value)


def test_parse_set_in_line_order() -> None:
    ops = parse_set(
        [
            f"public_key={PUB2_HEX.upper()}",  # wireguard-go accepts upper-case hex
            "allowed_ip=10.0.0.0/8",
            "allowed_ip=10.1.0.0/16",
            "allowed_ip=-10.1.0.0/16",
            "allowed_ip=-10.2.0.0/16",
            "allowed_ip=10.2.0.9/16",  # host bits masked
            "update_only=true",
            "persistent_keepalive_interval=0",
            f"preshared_key={'0' * 64}",
            "protocol_version=1",
            "endpoint=[fe80::1%eth0]:0",
            f"public_key={PUB3_HEX}",
            "allowed_ip=10.3.0.0/16",
            "replace_allowed_ips=true",  # undoes the allowed_ip before it
            "allowed_ip=10.4.0.0/16",
            f"public_key={PUB3_HEX}",
            "remove=true",
            "allowed_ip=10.5.0.0/16",  # ignored after remove
        ]
    )
    # update_only after allowed IPs: those go first (a new peer takes them from others),
    # then a remove of the peer if they created it; the rest only updates (see PeerBlock).
    assert ops == [
        PeerUpdate(
            public_key=PUB2,
            add_allowed_ips=(net("10.0.0.0/8"), net("10.2.0.0/16")),
            remove_allowed_ips=(net("10.1.0.0/16"),),
        ),
        PeerUpdate(public_key=PUB2, remove=True),
        PeerUpdate(
            public_key=PUB2,
            update_only=True,
            preshared_key=bytes(32),
            endpoint=("fe80::1%eth0", 0),
            persistent_keepalive=0,
        ),
        PeerUpdate(
            public_key=PUB3, replace_allowed_ips=True, add_allowed_ips=(net("10.4.0.0/16"),)
        ),
        PeerUpdate(public_key=PUB3, remove=True),
    ]
    first, conditional = ops[0], ops[1]
    assert isinstance(first, PeerUpdate) and isinstance(conditional, PeerUpdate)
    assert first.block is not None and conditional.block is first.block
    assert ops[2].block is None and ops[4].block is None  # type: ignore[union-attr]


# ---- framing ----


def test_reader_byte_by_byte_and_several_requests() -> None:
    data = b"get=1\n\n" + WG_SET + b"get=1\n\n" + WG_REMOVE
    whole = requests_of(data)
    assert [type(r) for r in whole] == [GetRequest, SetRequest, GetRequest, SetRequest]
    reader = UapiRequestReader()
    pieces: list[GetRequest | SetRequest | StatsRequest] = []
    for i in range(len(data)):
        reader.feed(data[i : i + 1])
        while (request := reader.next_request()) is not None:
            pieces.append(request)
    assert joined(pieces) == whole
    # Fed a byte at a time, a set comes out a line at a time, as its lines arrive.
    assert sum(1 for p in pieces if isinstance(p, SetRequest)) > len(whole)


def test_reader_get_with_trailing_character_is_einval() -> None:
    reader = UapiRequestReader()
    reader.feed(b"get=1\nx")
    request = reader.next_request()
    assert isinstance(request, GetRequest) and request.error is not None
    assert request.error.errno == errno.EINVAL


def test_reader_strips_cr_in_set_lines() -> None:
    (request,) = requests_of(b"set=1\r\n"[:5] + b"\nlisten_port=7\r\n\r\n")
    assert request == SetRequest(("listen_port=7",))


@pytest.mark.parametrize("data", [b"GET=1\n", b"get=2\n\n", b"set=1 \n", b"\n", b"hello\n"])
def test_reader_rejects_unknown_operations(data: bytes) -> None:
    reader = UapiRequestReader()
    reader.feed(data)
    with pytest.raises(UapiProtocolError):
        reader.next_request()


def test_reader_bounds_lines_and_streams_sets() -> None:
    reader = UapiRequestReader(max_line=100)
    reader.feed(b"x" * 101)
    with pytest.raises(UapiProtocolError, match="line too long"):
        reader.next_request()
    # A set of any size: each piece holds what one feed brought, nothing piles up.
    reader = UapiRequestReader(max_line=100)
    reader.feed(b"set=1\n")
    got = 0
    for _ in range(1000):
        reader.feed(b"listen_port=1\n" * 100)
        piece = reader.next_request()
        assert isinstance(piece, SetRequest) and not piece.final and len(piece.lines) == 100
        assert reader.next_request() is None
        got += len(piece.lines)
    reader.feed(b"\n")
    assert reader.next_request() == SetRequest((), final=True)
    assert got == 100_000 and reader.idle


def test_set_parser_in_pieces_equals_parse_set() -> None:
    lines = WG_SET.decode().splitlines()[1:-1]
    for cut in range(len(lines) + 1):
        parser = SetParser()
        first, e1 = parser.feed(lines[:cut])
        second, e2 = parser.feed(lines[cut:])
        assert e1 is None and e2 is None
        assert first + second + parser.finish() == parse_set(lines)


def test_set_parser_stops_at_the_first_bad_line_with_what_came_before() -> None:
    """As wireguard-go: the lines before a bad one are applied (the open peer's included),
    nothing after it."""
    parser = SetParser()
    ops, error = parser.feed(
        ["listen_port=7", f"public_key={PUB2_HEX}", "allowed_ip=10.0.0.0/8", "endpoint=nope",
         "listen_port=9"]
    )  # fmt: skip
    assert error is not None and error.errno == errno.EINVAL
    assert ops == [SetListenPort(7), PeerUpdate(PUB2, add_allowed_ips=(net("10.0.0.0/8"),))]
    assert parser.feed(["listen_port=10"]) == ([], None)  # the rest is ignored
    assert parser.finish() == []


def test_set_parser_splits_a_peer_with_many_allowed_ips() -> None:
    nets = [f"10.{i // 256}.{i % 256}.0/24" for i in range(2500)]
    lines = [f"public_key={PUB2_HEX}", "replace_allowed_ips=true"]
    lines += [f"allowed_ip={n}" for n in nets] + ["persistent_keepalive_interval=5"]
    parser = SetParser(max_networks=1000)
    ops, error = parser.feed(lines)
    ops += parser.finish()
    assert error is None and len(ops) == 3
    assert all(isinstance(op, PeerUpdate) for op in ops)
    assert [op.update_only for op in ops] == [False, True, True]  # type: ignore[union-attr]
    assert [op.replace_allowed_ips for op in ops] == [True, False, False]  # type: ignore[union-attr]
    # Applied in order, the pieces do what the whole would.
    start = DeviceSnapshot(private_key=PRIV1)
    assert apply_to_snapshot(start, ops) == apply_to_snapshot(start, parse_set(lines))
    assert len(apply_to_snapshot(start, ops).peers[0].allowed_ips) == 2500


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_reader_and_parser(data: bytes) -> None:
    """Random bytes give requests, None, UapiProtocolError or UapiError: nothing else."""
    reader = UapiRequestReader(max_line=64)
    reader.feed(b"set=1\n" + data)
    parser = SetParser()
    try:
        while (request := reader.next_request()) is not None:
            if isinstance(request, SetRequest):
                _, exc = parser.feed(request.lines)
                assert exc is None or exc.errno in (errno.EINVAL, errno.EPROTO)
                if request.final:
                    parser.finish()
                    parser = SetParser()
    except UapiProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                f"public_key={PUB2_HEX}",
                f"public_key={PUB3_HEX}",
                f"private_key={PRIV1_HEX}",
                f"preshared_key={PSK_HEX}",
                "allowed_ip=10.0.0.0/8",
                "allowed_ip=-10.0.0.0/8",
                "allowed_ip=fd00::/8",
                "replace_allowed_ips=true",
                "replace_peers=true",
                "update_only=true",
                "remove=true",
                "endpoint=1.2.3.4:5",
                "persistent_keepalive_interval=9",
                "listen_port=5",
            ]
        ),
        max_size=12,
    )
)
def test_fuzz_semantics_keep_allowed_ips_unique(lines: list[str]) -> None:
    """Whatever is applied, an allowed IP ends up with at most one peer, and our own key
    never becomes a peer."""
    try:
        ops = parse_set(lines)
    except UapiError:
        return
    snapshot = apply_to_snapshot(DeviceSnapshot(private_key=PRIV1), ops)
    owned = [n for peer in snapshot.peers for n in peer.allowed_ips]
    assert len(owned) == len(set(owned))
    assert PUB1 not in {peer.public_key for peer in snapshot.peers}


# ---- reference semantics ----


def test_semantics() -> None:
    start = DeviceSnapshot(
        private_key=PRIV1,
        peers=(PeerSnapshot(PUB2, tx_bytes=10, rx_bytes=20, allowed_ips=(net("10.0.0.0/8"),)),),
    )
    # update_only does not create; a peer with our own key is ignored.
    after = apply_to_snapshot(
        start,
        [
            PeerUpdate(PUB3, update_only=True, add_allowed_ips=(net("10.0.0.0/8"),)),
            PeerUpdate(PUB1, add_allowed_ips=(net("10.9.0.0/16"),)),
        ],
    )
    assert after == start
    # Adding an allowed IP to PUB3 takes it from PUB2; counters survive updates.
    after = apply_to_snapshot(
        start,
        [
            PeerUpdate(PUB3, add_allowed_ips=(net("10.0.0.0/8"),)),
            PeerUpdate(PUB2, update_only=True, preshared_key=PSK, endpoint=("::1", 5)),
        ],
    )
    assert after.peers == (
        PeerSnapshot(PUB2, PSK, ("::1", 5), tx_bytes=10, rx_bytes=20, allowed_ips=()),
        PeerSnapshot(PUB3, allowed_ips=(net("10.0.0.0/8"),)),
    )
    # A zero preshared key removes it; replace_peers empties; remove removes.
    cleared = apply_to_snapshot(after, [PeerUpdate(PUB2, preshared_key=bytes(32))])
    assert cleared.peers[0].preshared_key is None
    assert apply_to_snapshot(after, [ReplacePeers()]).peers == ()
    assert [
        p.public_key for p in apply_to_snapshot(after, [PeerUpdate(PUB2, remove=True)]).peers
    ] == [PUB3]
    # A new private key whose public key is a peer's drops that peer; zero key = no key.
    priv2 = base64.b64decode("SERyCch636eVNDlIMajZJ+lHsqvTClKWBcDAYjNHe3U=")
    assert [p.public_key for p in apply_to_snapshot(after, [SetPrivateKey(priv2)]).peers] == [PUB3]
    assert apply_to_snapshot(after, [SetPrivateKey(bytes(32))]).private_key is None


def _state(snapshot: DeviceSnapshot) -> dict[bytes, set[str]]:
    return {p.public_key: {str(n) for n in p.allowed_ips} for p in snapshot.peers}


def test_update_only_after_allowed_ips_removes_a_peer_the_block_created() -> None:
    """What wireguard-go v0.0.20220316 answered (`get=1` after each set): a new peer takes
    10.0.0.1 from PUB2, then update_only=true removes it with the address; the lines after
    it change nothing. For a peer that exists, update_only changes nothing."""
    start = DeviceSnapshot(
        private_key=PRIV1, peers=(PeerSnapshot(PUB2, allowed_ips=(net("10.0.0.1/32"),
                                                                  net("10.0.0.2/32"))),),
    )  # fmt: skip
    lines = [f"public_key={PUB3_HEX}", "allowed_ip=10.0.0.1/32", "update_only=true",
             "allowed_ip=10.0.0.2/32", "endpoint=192.0.2.1:5"]  # fmt: skip
    after = apply_to_snapshot(start, parse_set(lines))
    assert _state(after) == {PUB2: {"10.0.0.2/32"}}
    lines = [f"public_key={PUB2_HEX}", "allowed_ip=10.0.0.3/32", "update_only=true",
             "allowed_ip=10.0.0.4/32"]  # fmt: skip
    assert _state(apply_to_snapshot(after, parse_set(lines))) == {
        PUB2: {"10.0.0.2/32", "10.0.0.3/32", "10.0.0.4/32"}
    }
    # update_only before anything else: the block is an update, or nothing.
    lines = [f"public_key={PUB3_HEX}", "update_only=true", "allowed_ip=10.0.0.2/32"]
    assert parse_set(lines) == [
        PeerUpdate(PUB3, update_only=True, add_allowed_ips=(net("10.0.0.2/32"),))
    ]
    assert apply_to_snapshot(after, parse_set(lines)) == after


@pytest.mark.parametrize("exists", [False, True])
def test_update_only_after_a_piece_of_a_large_peer_went_out(exists: bool) -> None:
    """A peer with more allowed IPs than a piece holds is created by its first piece; an
    update_only=true after that removes it again if the set created it (as wireguard-go,
    which creates at the public_key line), however the pieces are applied."""
    nets = [f"10.{i // 256}.{i % 256}.0/24" for i in range(2500)]
    lines = [f"public_key={PUB3_HEX}"] + [f"allowed_ip={n}" for n in nets[:1500]]
    lines += ["update_only=true"] + [f"allowed_ip={n}" for n in nets[1500:]]
    lines += ["persistent_keepalive_interval=5"]
    old = (PeerSnapshot(PUB3, allowed_ips=(net("192.0.2.0/24"),)),) if exists else ()
    start = DeviceSnapshot(private_key=PRIV1, peers=old)
    parser = SetParser(max_networks=1000)
    backend = MemoryBackend(start)  # one apply per piece, as the server streams a set
    for piece in (lines[:700], lines[700:1600], lines[1600:]):
        ops, error = parser.feed(piece)
        assert error is None
        backend.apply(ops)
    backend.apply(parser.finish())
    if exists:
        assert _state(backend.snapshot) == {PUB3: {"192.0.2.0/24", *nets}}
        assert backend.snapshot.peers[0].persistent_keepalive == 5
    else:
        assert backend.snapshot.peers == ()
    # Parsed whole, the same; and the same operations on a fresh start decide afresh.
    assert apply_to_snapshot(start, parse_set(lines)) == backend.snapshot
    other = DeviceSnapshot(private_key=PRIV1, peers=() if exists else (PeerSnapshot(PUB3),))
    again = apply_to_snapshot(other, parse_set(lines))
    assert len(again.peers) == (0 if exists else 1)


# ---- the server, on a socket in a private directory ----


@pytest.fixture
def sock_dir() -> Iterator[str]:
    # Short path: AF_UNIX paths are limited to 107 bytes.
    path = tempfile.mkdtemp(prefix="wtu", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def exchange(path: str, data: bytes, replies: int) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(data)
        await writer.drain()
        out = b""
        while out.count(b"\n\n") < replies:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            assert chunk, f"connection closed after {out!r}"
            out += chunk
        return out
    finally:
        writer.close()
        await writer.wait_closed()


def test_socket_is_created_0600_without_a_chmod_by_path(
    sock_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (#15): os.chmod(path) after bind followed a symlink swapped into the
    socket's place. The umask now gives 0600 at bind, and nothing chmods by path."""

    def no_chmod(*args: object, **kwargs: object) -> None:
        raise AssertionError("os.chmod by path follows symlinks")

    monkeypatch.setattr(os, "chmod", no_chmod)
    old = os.umask(0)  # whatever the caller's umask, the socket is 0600

    async def main() -> None:
        async with UapiServer("wt0", MemoryBackend(), socket_dir=sock_dir) as server:
            mode = os.lstat(server.path).st_mode
            assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600

    try:
        asyncio.run(main())
    finally:
        os.umask(old)
    assert os.umask(old) == old  # the process umask was restored


def test_server_refuses_a_socket_directory_others_may_write(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)

    async def main() -> None:
        server = UapiServer("wt0", MemoryBackend(), socket_dir=str(shared))
        with pytest.raises(OSError, match="writable by others"):
            await server.start()
        await server.close()

    asyncio.run(main())
    assert not (shared / "wt0.sock").exists()


def test_server_get_set_on_one_connection(sock_dir: str) -> None:
    async def main() -> None:
        backend = MemoryBackend(DeviceSnapshot(private_key=PRIV1, listen_port=51820))
        async with UapiServer("wt0", backend, socket_dir=sock_dir) as server:
            assert server.path == os.path.join(sock_dir, "wt0.sock")
            mode = os.stat(server.path).st_mode
            assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
            assert stat.S_IMODE(os.stat(sock_dir).st_mode) in (0o700, 0o755)
            out = await exchange(
                server.path,
                b"get=1\n\n"
                + WG_SET
                + b"get=1\n\nset=1\nlisten_port=x\n\n"
                + WG_REMOVE
                + b"get=1\n\n",
                replies=6,
            )
            replies = out.decode().split("\n\n")
            assert replies[0] == f"private_key={PRIV1_HEX}\nlisten_port=51820\nerrno=0"
            assert replies[1] == "errno=0"
            assert replies[2].splitlines() == [
                f"private_key={PRIV1_HEX}",
                "listen_port=51820",
                f"public_key={PUB2_HEX}",
                f"preshared_key={'0' * 64}",
                "protocol_version=1",
                "endpoint=127.0.0.1:5555",
                "last_handshake_time_sec=0",
                "last_handshake_time_nsec=0",
                "tx_bytes=0",
                "rx_bytes=0",
                "persistent_keepalive_interval=0",
                "allowed_ip=10.9.0.0/24",
                "errno=0",
            ]
            assert replies[3] == f"errno={-errno.EINVAL}"
            assert replies[4] == "errno=0"
            assert replies[5] == f"private_key={PRIV1_HEX}\nlisten_port=51820\nerrno=0"
            stats = server.statistics()
            assert (stats.connections, stats.gets, stats.sets, stats.failed) == (1, 3, 3, 1)
        assert not os.path.exists(server.path)

    asyncio.run(main())


def test_stats_request_is_read_like_get() -> None:
    assert requests_of(b"wiretun-stats=1\n\nget=1\n\n") == [StatsRequest(), GetRequest()]
    (bad,) = requests_of(b"wiretun-stats=1\nx")
    assert isinstance(bad, StatsRequest) and bad.error is not None


def test_server_answers_stats_with_one_json_line_or_eopnotsupp(sock_dir: str) -> None:
    async def main() -> None:
        backend = MemoryBackend()
        counters = {"peers": [], "drops": {"core.mac1": 2}}
        async with UapiServer("wt4", backend, socket_dir=sock_dir, stats=lambda: counters) as s:
            out = await exchange(s.path, b"wiretun-stats=1\n\nget=1\n\n", 2)
            stats_reply, get_reply = out.decode().split("\n\n")[:2]
            line, errno_line = stats_reply.splitlines()
            assert line.startswith("stats=") and errno_line == "errno=0"
            assert json.loads(line.removeprefix("stats=")) == counters
            assert get_reply == STATS_MARKER + "errno=0"  # it says it answers the stats
        async with UapiServer("wt5", backend, socket_dir=sock_dir) as s:
            out = await exchange(s.path, b"wiretun-stats=1\n\n", 1)
            assert out == f"errno={-errno.EOPNOTSUPP}\n\n".encode()

    asyncio.run(main())


def test_server_drops_garbage_and_survives_backend_bugs(sock_dir: str) -> None:
    class Broken(MemoryBackend):
        def apply(self, ops: list[SetOperation]) -> None:
            raise RuntimeError("bug")

    async def main() -> None:
        async with UapiServer("wt1", Broken(), socket_dir=sock_dir) as server:
            reader, writer = await asyncio.open_unix_connection(server.path)
            writer.write(b"hello=1\n")
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, no answer
            writer.close()
            await writer.wait_closed()
            assert await exchange(server.path, b"set=1\nlisten_port=1\n\n", 1) == (
                f"errno=-{errno.ENOANO}\n\n".encode()
            )
            assert server.statistics().dropped == 1

    asyncio.run(main())


def test_server_replaces_stale_socket_and_refuses_live_one(sock_dir: str) -> None:
    async def main() -> None:
        path = os.path.join(sock_dir, "wt2.sock")
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)
        stale.close()  # the file stays; connecting to it is refused
        async with UapiServer("wt2", MemoryBackend(), socket_dir=sock_dir):
            assert await exchange(path, b"get=1\n\n", 1) == b"errno=0\n\n"
            second = UapiServer("wt2", MemoryBackend(), socket_dir=sock_dir)
            with pytest.raises(UapiInUseError, match="in use") as info:
                await second.start()
            assert info.value.errno == errno.EADDRINUSE
            await second.close()
            assert os.path.exists(path)  # the failed second server left ours alone
            assert await exchange(path, b"get=1\n\n", 1) == b"errno=0\n\n"
        assert not os.path.exists(path)
        Path(sock_dir, "wt3.sock").write_text("not a socket")
        with pytest.raises(UapiInUseError, match="not a socket"):
            await UapiServer("wt3", MemoryBackend(), socket_dir=sock_dir).start()

    asyncio.run(main())


def test_server_notices_removal_and_keeps_a_replacement(sock_dir: str) -> None:
    async def main() -> None:
        called: list[bool] = []
        server = UapiServer(
            "wt4",
            MemoryBackend(),
            socket_dir=sock_dir,
            poll_interval=0.02,
            on_removed=lambda: called.append(True),
        )
        await server.start()
        try:
            # An idle client stays connected until close() ends it.
            _reader, idle = await asyncio.open_unix_connection(server.path)
            await asyncio.sleep(0.1)
            assert not server.removed.is_set()
            os.unlink(server.path)
            await asyncio.wait_for(server.removed.wait(), 5)
            assert called == [True]
            # Someone else's socket now has our name: close() must not delete it.
            other = socket.socket(socket.AF_UNIX)
            other.bind(server.path)
        finally:
            await server.close()
        assert os.path.exists(server.path)
        other.close()
        idle.close()

    asyncio.run(main())


def test_server_rejects_bad_names() -> None:
    for name in ("", "a/b", "x" * 16, "../etc"):
        with pytest.raises(ValueError, match="not a valid interface name"):
            UapiServer(name, MemoryBackend())


def test_server_answers_a_valid_request_before_closing_on_a_malformed_one(sock_dir: str) -> None:
    """Regression (#15): a valid request followed by a malformed one in the same read lost
    the first reply (the protocol error escaped before the replies were sent)."""

    async def main() -> None:
        backend = MemoryBackend(DeviceSnapshot(private_key=PRIV1, listen_port=51820))
        async with UapiServer("wt5", backend, socket_dir=sock_dir) as server:
            reader, writer = await asyncio.open_unix_connection(server.path)
            writer.write(b"set=1\nlisten_port=7\n\nget=1\n\nbogus=1\n")
            out = await asyncio.wait_for(reader.read(), 5)  # then closed
            writer.close()
            await writer.wait_closed()
            assert out == f"errno=0\n\nprivate_key={PRIV1_HEX}\nlisten_port=7\nerrno=0\n\n".encode()
            assert server.statistics().dropped == 1

    asyncio.run(main())


def test_server_past_its_connection_cap_makes_new_clients_wait(sock_dir: str) -> None:
    """As with wireguard-go (which serves them one at a time), a client past the cap is not
    turned away: it waits in the listen backlog and is answered once a connection closes."""

    async def main() -> None:
        async with UapiServer("wt6", MemoryBackend(), socket_dir=sock_dir,
                              max_connections=3) as server:  # fmt: skip
            held = [await asyncio.open_unix_connection(server.path) for _ in range(3)]
            await asyncio.sleep(0.05)  # all three accepted
            waiting = [asyncio.create_task(exchange(server.path, b"get=1\n\n", 1))
                       for _ in range(5)]  # fmt: skip
            done, _ = await asyncio.wait(waiting, timeout=0.3)
            assert not done  # queued, not refused, not served
            assert server.statistics().waits == 1
            _, first = held.pop()
            first.close()
            await first.wait_closed()
            # One slot: the five go through it one after the other.
            assert await asyncio.wait_for(asyncio.gather(*waiting), 5) == [b"errno=0\n\n"] * 5
            for _, w in held:
                w.close()
            stats = server.statistics()
            assert stats.connections == 8 and stats.waits >= 2

    asyncio.run(main())


def test_server_closes_idle_connections(sock_dir: str) -> None:
    async def main() -> None:
        async with UapiServer("wt7", MemoryBackend(), socket_dir=sock_dir,
                              idle_timeout=0.2) as server:  # fmt: skip
            reader, writer = await asyncio.open_unix_connection(server.path)
            writer.write(b"set=1\nlisten_port=7\n")  # half a request, then silence
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            assert server.statistics().idle_closed == 1
            # A client that keeps talking is not idle. (The half set's line was applied, as
            # wireguard-go applies each line it reads.)
            reader, writer = await asyncio.open_unix_connection(server.path)
            for _ in range(4):
                writer.write(b"get=1\n\n")
                got = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
                assert got == b"listen_port=7\nerrno=0\n\n"
                await asyncio.sleep(0.1)
            writer.close()
            assert server.statistics().idle_closed == 1

    asyncio.run(main())


class _Recording(MemoryBackend):
    def __init__(self) -> None:
        super().__init__(DeviceSnapshot(private_key=PRIV1))
        self.applied: list[int] = []

    def apply(self, ops: list[SetOperation]) -> None:
        self.applied.append(len(ops))
        super().apply(ops)


def test_server_applies_a_set_as_its_lines_arrive(sock_dir: str) -> None:
    """A set is parsed and applied piece by piece (as wireguard-go applies lines), so a
    multi-megabyte set is never held whole: before its blank line arrives, its first peers
    are configured already."""
    keys = [(i + 1).to_bytes(32, "big") for i in range(3000)]
    body = "".join(f"public_key={k.hex()}\nallowed_ip=10.{i // 256}.{i % 256}.1/32\n"
                   for i, k in enumerate(keys))  # fmt: skip

    async def main() -> None:
        backend = _Recording()
        async with UapiServer("wt8", backend, socket_dir=sock_dir) as server:
            reader, writer = await asyncio.open_unix_connection(server.path)
            writer.write(b"set=1\n" + body.encode())
            await writer.drain()
            for _ in range(100):
                await asyncio.sleep(0.02)
                if len(backend.snapshot.peers) >= 2999:
                    break
            assert len(backend.snapshot.peers) >= 2999  # all but the still-open last peer
            assert server.statistics().sets == 0  # and the request is not over
            writer.write(b"\n")
            assert await asyncio.wait_for(reader.readuntil(b"\n\n"), 5) == b"errno=0\n\n"
            writer.close()
            assert len(backend.snapshot.peers) == 3000
            assert len(backend.applied) >= 2

    asyncio.run(main())


def test_server_update_only_after_a_streamed_piece_removes_the_new_peer(sock_dir: str) -> None:
    nets = "".join(f"allowed_ip=10.{i // 256}.{i % 256}.0/24\n" for i in range(1500))
    request = f"set=1\npublic_key={PUB3_HEX}\n{nets}update_only=true\nallowed_ip=10.99.0.0/16\n\n"

    async def main() -> None:
        backend = MemoryBackend(DeviceSnapshot(private_key=PRIV1))
        async with UapiServer("wt10", backend, socket_dir=sock_dir) as server:
            assert await exchange(server.path, request.encode(), 1) == b"errno=0\n\n"
        assert backend.snapshot.peers == ()

    asyncio.run(main())


def test_server_failed_set_keeps_what_came_before_and_ignores_the_rest(sock_dir: str) -> None:
    async def main() -> None:
        backend = MemoryBackend(DeviceSnapshot(private_key=PRIV1))
        async with UapiServer("wt9", backend, socket_dir=sock_dir) as server:
            out = await exchange(server.path, b"set=1\nlisten_port=7\nlisten_port=x\n"
                                 b"listen_port=9\n\nget=1\n\n", 2)  # fmt: skip
            assert out == (f"errno={-errno.EINVAL}\n\nprivate_key={PRIV1_HEX}\n"
                           "listen_port=7\nerrno=0\n\n").encode()  # fmt: skip

    asyncio.run(main())


def test_server_answers_a_large_get_in_slices(sock_dir: str) -> None:
    """The loop runs between the slices of a get whose formatting takes long."""

    class Slow(MemoryBackend):
        def get_pieces(self) -> Iterator[str]:
            yield "listen_port=1\n"
            for i in range(300):
                time.sleep(0.001)  # 1 ms of work per peer
                yield f"public_key={i:064x}\n"
            yield "errno=0\n\n"

    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        async with UapiServer("wta", Slow(), socket_dir=sock_dir) as server:
            task = asyncio.create_task(ticker())
            reader, writer = await asyncio.open_unix_connection(server.path)
            writer.write(b"get=1\n\n")
            out = await asyncio.wait_for(reader.readuntil(b"errno=0\n\n"), 10)
            task.cancel()
            writer.close()
        assert out.count(b"public_key=") == 300
        assert ticks >= 20  # 300 ms of work in 5 ms slices: dozens of loop turns between

    asyncio.run(main())
