"""Noise IKpsk2: the cacophony vector byte for byte, and WireGuard initiator <-> responder."""

from __future__ import annotations

import json
import shutil
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wiretun.lab.netns import Topology
from wiretun.wireguard.cookie import CookieChecker, CookieGenerator
from wiretun.wireguard.crypto import X25519Key, aead_open, aead_seal, blake2s_hash, tai64n
from wiretun.wireguard.errors import HandshakeError
from wiretun.wireguard.handshake import (
    CONSTRUCTION,
    IDENTIFIER,
    InitiatorHandshake,
    SessionKeys,
    StaticIdentity,
    SymmetricState,
    UnknownStaticKeyError,
    consume_initiation,
    initial_state,
    read_message1,
    read_message2,
    write_message1,
    write_message2,
)
from wiretun.wireguard.keys import key_from_base64, key_to_base64
from wiretun.wireguard.messages import (
    MSG_RESPONSE,
    Initiation,
    Response,
    message_type,
    pack_transport_header,
    unpack_transport_header,
)

# cacophony Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s (mcginty/snow tests/vectors/cacophony.txt),
# copied from /work/shared/design/noise_ikpsk2_vectors.json.
VECTOR_FILE = Path(__file__).parent / "vectors" / "noise_ikpsk2_vectors.json"
# WireGuard messages between fixed keys, as wiretun made them before its DH shortcuts.
PINNED_FILE = Path(__file__).parent / "vectors" / "wireguard_handshake_pinned.json"


def _vector() -> dict[str, Any]:
    vectors = json.loads(VECTOR_FILE.read_text())["vectors"]
    (vector,) = [v for v in vectors if v["protocol_name"] == CONSTRUCTION.decode()]
    return dict(vector)


def test_cacophony_ikpsk2_vector_byte_exact() -> None:
    v = _vector()
    h = bytes.fromhex
    msgs = [(h(m["payload"]), h(m["ciphertext"])) for m in v["messages"]]
    prologue, psk = h(v["init_prologue"]), h(v["init_psks"][0])
    assert (h(v["resp_prologue"]), h(v["resp_psks"][0])) == (prologue, psk)
    init = StaticIdentity.from_private(h(v["init_static"]))
    resp = StaticIdentity.from_private(h(v["resp_static"]))
    assert resp.public == h(v["init_remote_static"])
    init_eph, resp_eph = h(v["init_ephemeral"]), h(v["resp_ephemeral"])

    # Message 1: -> e, es, s, ss (+ payload).
    si = initial_state(resp.public, prologue)
    e, sealed_s, sealed_p = write_message1(si, init, resp.public, init_eph, msgs[0][0])
    assert e + sealed_s + sealed_p == msgs[0][1]
    sr = initial_state(resp.public, prologue)
    ct = msgs[0][1]
    remote_static, payload = read_message1(sr, resp, ct[:32], ct[32:80], ct[80:])
    assert (remote_static, payload) == (init.public, msgs[0][0])

    # Message 2: <- e, ee, se, psk (+ payload).
    e2, sealed2 = write_message2(
        sr,
        resp_eph,
        remote_ephemeral=e,
        remote_static=remote_static,
        psk=psk,
        payload=msgs[1][0],
    )
    assert e2 + sealed2 == msgs[1][1]
    got = read_message2(
        si,
        init,
        ephemeral_private=init_eph,
        remote_ephemeral=msgs[1][1][:32],
        psk=psk,
        sealed_payload=msgs[1][1][32:],
    )
    assert got == msgs[1][0]
    assert si.hash.hex() == v["handshake_hash"]
    assert sr.hash == si.hash

    # Transport: initiator and responder alternate, each counting its own nonces from 0.
    i_send, i_recv = si.split()
    assert sr.split() == (i_send, i_recv)
    for n, (payload, ciphertext) in enumerate(msgs[2:]):
        key = i_send if n % 2 == 0 else i_recv
        assert aead_seal(key, n // 2, payload, b"") == ciphertext
        assert aead_open(key, n // 2, ciphertext, b"") == payload


def test_cacophony_vector_with_loaded_keys_and_precomputed_static_static() -> None:
    # The shortcuts the device uses (keys loaded once, ss handed in) give the same bytes.
    v = _vector()
    h = bytes.fromhex
    msgs = [(h(m["payload"]), h(m["ciphertext"])) for m in v["messages"]]
    prologue, psk = h(v["init_prologue"]), h(v["init_psks"][0])
    init = StaticIdentity.from_private(h(v["init_static"]))
    resp = StaticIdentity.from_private(h(v["resp_static"]))
    init_eph, resp_eph = X25519Key(h(v["init_ephemeral"])), X25519Key(h(v["resp_ephemeral"]))
    ss = init.static_static(resp.public)
    assert ss == resp.static_static(init.public)

    si = initial_state(resp.public, prologue)
    e, sealed_s, sealed_p = write_message1(
        si, init, resp.public, init_eph, msgs[0][0], static_static=ss
    )
    assert e + sealed_s + sealed_p == msgs[0][1]
    sr = initial_state(resp.public, prologue)
    ct = msgs[0][1]
    asked: list[bytes] = []

    def known(key: bytes) -> bytes:
        asked.append(key)
        return ss

    got = read_message1(sr, resp, ct[:32], ct[32:80], ct[80:], static_static=known)
    assert got == (init.public, msgs[0][0])
    assert asked == [init.public]
    e2, sealed2 = write_message2(
        sr, resp_eph, remote_ephemeral=e, remote_static=init.public, psk=psk, payload=msgs[1][0]
    )
    assert e2 + sealed2 == msgs[1][1]
    payload = read_message2(
        si, init, ephemeral_private=init_eph, remote_ephemeral=e2, psk=psk, sealed_payload=sealed2
    )
    assert payload == msgs[1][0]
    assert si.hash.hex() == v["handshake_hash"] and sr.hash == si.hash


def _pinned() -> dict[str, Any]:
    return dict(json.loads(PINNED_FILE.read_text()))


@pytest.mark.parametrize("precomputed", [False, True])
def test_wireguard_messages_match_the_pinned_vector(precomputed: bool) -> None:
    v = _pinned()
    h = bytes.fromhex
    ini_id = StaticIdentity.from_private(h(v["initiator_private"]))
    resp_id = StaticIdentity.from_private(h(v["responder_private"]))
    ss = ini_id.static_static(resp_id.public) if precomputed else None
    lookup = {ini_id.public: resp_id.static_static(ini_id.public)}.get if precomputed else None
    for case in v["cases"]:
        psk = None if case["psk"] is None else h(case["psk"])
        ini = InitiatorHandshake.create(
            ini_id, resp_id.public, psk, v["sender_index"], v["wall_time"],
            ephemeral_private=h(v["initiator_ephemeral"]), static_static=ss,
        )  # fmt: skip
        assert ini.message.hex() == case["initiation"]
        resp = consume_initiation(resp_id, Initiation.unpack(ini.message), static_static=lookup)
        assert resp.timestamp == tai64n(v["wall_time"])
        message, keys_r = resp.create_response(
            psk, v["receiver_index"], ephemeral_private=h(v["responder_ephemeral"])
        )
        assert message.hex() == case["response"]
        keys_i = ini.consume_response(Response.unpack(message))
        assert ini.handshake_hash.hex() == case["handshake_hash"] == resp.handshake_hash.hex()
        assert (keys_i.send_key.hex(), keys_i.recv_key.hex()) == (
            case["initiator_send"],
            case["initiator_recv"],
        )
        assert (keys_r.recv_key, keys_r.send_key) == (keys_i.send_key, keys_i.recv_key)


class _ScalarMults:
    """Counts X25519 scalar multiplications: each key load and each exchange is one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loads = self.exchanges = 0
        load, exchange = X25519Key.__init__, X25519Key.exchange

        def counted_load(key: X25519Key, private: bytes) -> None:
            self.loads += 1
            load(key, private)

        def counted_exchange(key: X25519Key, public: bytes) -> bytes:
            self.exchanges += 1
            return exchange(key, public)

        monkeypatch.setattr(X25519Key, "__init__", counted_load)
        monkeypatch.setattr(X25519Key, "exchange", counted_exchange)

    def take(self) -> tuple[int, int]:
        got = (self.loads, self.exchanges)
        self.loads = self.exchanges = 0
        return got


def test_handshake_scalar_multiplications(monkeypatch: pytest.MonkeyPatch) -> None:
    # wireguard-go's costs: with the static keys loaded and ss precomputed, an initiation
    # is 2 multiplications to make and 1 to read, a response 3 to make and 2 to read.
    ss = ALICE.static_static(BOB.public)
    known = {ALICE.public: BOB.static_static(ALICE.public)}.get
    count = _ScalarMults(monkeypatch)
    ini = InitiatorHandshake.create(ALICE, BOB.public, None, 1, WALL, static_static=ss)
    assert count.take() == (1, 1)  # the ephemeral (and its public key), es
    resp = consume_initiation(BOB, Initiation.unpack(ini.message), static_static=known)
    assert count.take() == (0, 1)  # es
    message, _ = resp.create_response(None, 2)
    assert count.take() == (1, 2)  # the ephemeral, ee, se
    ini.consume_response(Response.unpack(message))
    assert count.take() == (0, 2)  # ee, se
    # Without the precomputed ss each side computes it: one more multiplication.
    ini = InitiatorHandshake.create(ALICE, BOB.public, None, 1, WALL)
    assert count.take() == (1, 2)
    consume_initiation(BOB, Initiation.unpack(ini.message))
    assert count.take() == (0, 2)


def test_initiation_from_a_static_key_that_is_no_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    carol = StaticIdentity.generate()
    msg = Initiation.unpack(InitiatorHandshake.create(carol, BOB.public, None, 1, WALL).message)
    known = {ALICE.public: BOB.static_static(ALICE.public)}.get
    count = _ScalarMults(monkeypatch)
    with pytest.raises(UnknownStaticKeyError) as caught:
        consume_initiation(BOB, msg, static_static=known)
    assert caught.value.remote_static == carol.public
    assert isinstance(caught.value, HandshakeError)
    assert count.take() == (0, 1)  # es only: no ss, the timestamp is not opened


def test_static_identity_checks_its_key_and_hides_it() -> None:
    with pytest.raises(ValueError, match="does not match"):
        StaticIdentity(ALICE.private, BOB.public, ALICE.key)
    assert ALICE.private.hex() not in repr(ALICE) + repr(ALICE.key)
    assert ALICE.public.hex() in repr(ALICE.key)
    assert StaticIdentity.from_private(ALICE.private) == ALICE


def test_wireguard_initial_state_is_the_noise_initialisation() -> None:
    # REFERENCE §4.2: Ci = Hash(CONSTRUCTION), Hi = Hash(Ci || IDENTIFIER), H = Hash(Hi || S_r).
    ci = blake2s_hash(CONSTRUCTION)
    hi = blake2s_hash(ci, IDENTIFIER)
    spub = b"\x09" * 32
    state = initial_state(spub)
    assert state.chaining_key == ci
    assert state.hash == blake2s_hash(hi, spub)
    generic = SymmetricState.initialize(CONSTRUCTION, IDENTIFIER)
    generic.mix_hash(spub)
    assert generic == state


def test_short_protocol_names_are_padded_not_hashed() -> None:
    state = SymmetricState.initialize(b"Noise_NN", b"")
    assert state.chaining_key == b"Noise_NN" + bytes(24)


ALICE = StaticIdentity.from_private(bytes.fromhex("a0" + "11" * 31))
BOB = StaticIdentity.from_private(bytes.fromhex("b0" + "22" * 31))
WALL = 1_700_000_000.5


def _handshake(psk_i: bytes | None, psk_r: bytes | None) -> tuple[SessionKeys, SessionKeys]:
    ini = InitiatorHandshake.create(ALICE, BOB.public, psk_i, sender_index=111, wall_time=WALL)
    assert len(ini.message) == 148
    assert ini.message[-32:] == bytes(32)  # macs are cookie.py's job
    resp = consume_initiation(BOB, Initiation.unpack(ini.message))
    assert resp.remote_static == ALICE.public
    assert resp.remote_index == 111
    assert resp.timestamp == tai64n(WALL)
    message, keys_r = resp.create_response(psk_r, sender_index=222)
    assert len(message) == 92
    assert message[-32:] == bytes(32)
    keys_i = ini.consume_response(Response.unpack(message))
    assert ini.handshake_hash == resp.handshake_hash
    return keys_i, keys_r


@pytest.mark.parametrize("psk", [None, b"\x42" * 32])
def test_round_trip_keys_match_crosswise(psk: bytes | None) -> None:
    keys_i, keys_r = _handshake(psk, psk)
    assert keys_i.send_key == keys_r.recv_key
    assert keys_i.recv_key == keys_r.send_key
    assert keys_i.send_key != keys_i.recv_key
    assert (keys_i.local_index, keys_i.remote_index, keys_i.is_initiator) == (111, 222, True)
    assert (keys_r.local_index, keys_r.remote_index, keys_r.is_initiator) == (222, 111, False)
    packet = aead_seal(keys_i.send_key, 0, b"ping", b"")
    assert aead_open(keys_r.recv_key, 0, packet, b"") == b"ping"
    assert "send_key" not in repr(keys_i)  # key material stays out of logs
    assert "recv_key" not in repr(keys_r)


def test_explicit_zero_psk_equals_no_psk() -> None:
    a, _ = _handshake(None, bytes(32))
    assert a.send_key  # both sides agreed, so no HandshakeError was raised


def test_psk_mismatch_fails_at_the_initiator() -> None:
    with pytest.raises(HandshakeError):
        _handshake(b"\x01" * 32, b"\x02" * 32)
    with pytest.raises(HandshakeError):
        _handshake(None, b"\x02" * 32)


def test_sessions_differ_between_handshakes() -> None:
    a, _ = _handshake(None, None)
    b, _ = _handshake(None, None)
    assert a.send_key != b.send_key  # fresh ephemerals each time


def test_injected_ephemeral_and_rng_are_deterministic() -> None:
    def make() -> tuple[bytes, bytes]:
        ini = InitiatorHandshake.create(
            ALICE, BOB.public, None, 5, WALL, ephemeral_private=b"\x05" * 32
        )
        resp = consume_initiation(BOB, Initiation.unpack(ini.message))
        msg, _ = resp.create_response(None, 6, rng=lambda n: b"\x07" * n)
        return ini.message, msg

    assert make() == make()


def test_initiation_for_someone_else_is_rejected() -> None:
    carol = StaticIdentity.generate()
    ini = InitiatorHandshake.create(ALICE, carol.public, None, 1, WALL)
    with pytest.raises(HandshakeError):
        consume_initiation(BOB, Initiation.unpack(ini.message))


@pytest.mark.parametrize(("start", "end"), [(8, 40), (40, 88), (88, 116)])
def test_tampered_initiation_fields_are_rejected(start: int, end: int) -> None:
    msg = bytearray(InitiatorHandshake.create(ALICE, BOB.public, None, 1, WALL).message)
    msg[(start + end) // 2] ^= 0x01
    with pytest.raises(HandshakeError):
        consume_initiation(BOB, Initiation.unpack(bytes(msg)))


def test_low_order_keys_raise_handshake_error() -> None:
    with pytest.raises(HandshakeError):
        InitiatorHandshake.create(ALICE, bytes(32), None, 1, WALL)
    ini = Initiation.unpack(InitiatorHandshake.create(ALICE, BOB.public, None, 1, WALL).message)
    forged = Initiation(ini.sender, bytes(32), ini.encrypted_static, ini.encrypted_timestamp)
    with pytest.raises(HandshakeError):
        consume_initiation(BOB, forged)


def test_response_checks_index_single_use_and_forgeries() -> None:
    ini = InitiatorHandshake.create(ALICE, BOB.public, None, 111, WALL)
    resp = consume_initiation(BOB, Initiation.unpack(ini.message))
    message, keys_r = resp.create_response(None, 222)
    good = Response.unpack(message)
    with pytest.raises(HandshakeError):
        resp.create_response(None, 223)  # one response per initiation

    wrong_index = Response(good.sender, 999, good.ephemeral, good.encrypted_nothing)
    with pytest.raises(HandshakeError):
        ini.consume_response(wrong_index)
    forged = Response(good.sender, good.receiver, good.ephemeral, bytes(16))
    with pytest.raises(HandshakeError):
        ini.consume_response(forged)
    other_eph = Response(good.sender, good.receiver, BOB.public, good.encrypted_nothing)
    with pytest.raises(HandshakeError):
        ini.consume_response(other_eph)

    # The failures above must not have spoiled the state: the genuine response still works.
    keys_i = ini.consume_response(good)
    assert keys_i.send_key == keys_r.recv_key
    with pytest.raises(HandshakeError):
        ini.consume_response(good)  # a replayed response gets no second keypair


def test_bad_psk_length_is_api_misuse() -> None:
    with pytest.raises(ValueError, match="preshared"):
        InitiatorHandshake.create(ALICE, BOB.public, b"short", 1, WALL)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=144, max_size=144))
def test_garbage_initiations_raise_only_handshake_error(body: bytes) -> None:
    msg = Initiation.unpack(b"\x01\x00\x00\x00" + body)
    with pytest.raises(HandshakeError):
        consume_initiation(BOB, msg)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=88, max_size=88))
def test_garbage_responses_raise_only_handshake_error(body: bytes) -> None:
    ini = InitiatorHandshake.create(ALICE, BOB.public, None, 1, WALL)
    msg = Response.unpack(b"\x02\x00\x00\x00" + body[:4] + b"\x01\x00\x00\x00" + body[8:])
    with pytest.raises(HandshakeError):
        ini.consume_response(msg)


# --- interop: a real wireguard-go answers our initiation and our transport packets ---------


def _icmp_echo(src: bytes, dst: bytes, ident: int, seq: int, data: bytes) -> bytes:
    from wiretun.packet import internet_checksum

    icmp = bytearray(struct.pack("!BBHHH", 8, 0, 0, ident, seq) + data)
    struct.pack_into("!H", icmp, 2, internet_checksum(icmp))
    header = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0, src, dst)
    )
    struct.pack_into("!H", header, 10, internet_checksum(header))
    return bytes(header + icmp)


@pytest.mark.root
@pytest.mark.skipif(
    shutil.which("wireguard-go") is None or shutil.which("wg") is None,
    reason="needs wireguard-go and wg",
)
@pytest.mark.parametrize("with_psk", [False, True])
def test_interop_with_wireguard_go(topology: Topology, with_psk: bool) -> None:
    from wiretun.lab.peers import WireguardGoPeer, generate_psk

    ns = topology.netns()
    me = StaticIdentity.generate()
    psk_b64 = generate_psk() if with_psk else None
    psk = key_from_base64(psk_b64) if psk_b64 else None
    with WireguardGoPeer(ns).start() as peer:
        peer.configure(listen_port=51820)
        peer.add_peer(key_to_base64(me.public), allowed_ips=["10.99.0.2/32"], preshared_key=psk_b64)
        peer.link_up(["10.99.0.1/24"])
        remote = key_from_base64(peer.keys.public)
        with ns.enter():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.settimeout(5.0)
            sock.bind(("127.0.0.1", 0))
            ini = InitiatorHandshake.create(me, remote, psk, 0x1234, wall_time=1_800_000_000.0)
            sock.sendto(CookieGenerator(remote).add_macs(ini.message, 0.0), ("127.0.0.1", 51820))
            reply = sock.recv(2048)
            assert message_type(reply) == MSG_RESPONSE
            assert CookieChecker(me.public).check_mac1(reply)  # wg-go's mac1 agrees with ours
            keys = ini.consume_response(Response.unpack(reply))
            assert keys.local_index == 0x1234

            src, dst = bytes([10, 99, 0, 2]), bytes([10, 99, 0, 1])
            ping = _icmp_echo(src, dst, 0xBEEF, 1, b"wiretun-interop!")
            padded = ping + bytes(-len(ping) % 16)
            sealed = aead_seal(keys.send_key, 0, padded, b"")
            sock.sendto(pack_transport_header(keys.remote_index, 0) + sealed, ("127.0.0.1", 51820))

            for _ in range(5):  # skip keepalives, if wg-go sends any first
                msg = sock.recv(2048)
                receiver, counter = unpack_transport_header(msg)
                assert receiver == keys.local_index
                inner = aead_open(keys.recv_key, counter, msg[16:], b"")
                if inner:
                    break
            assert inner[12:16] == dst  # IPv4 source: the echo came from wg-go's side
            assert inner[16:20] == src
            assert inner[20] == 0  # ICMP echo reply
            assert inner[24:28] == struct.pack("!HH", 0xBEEF, 1)
            assert inner[28:44] == b"wiretun-interop!"
        _, peers = peer.dump()
        assert peers[0].latest_handshake > 0
