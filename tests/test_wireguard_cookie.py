"""mac1/mac2, cookie replies under an injected clock, and the per-source rate limiter."""

from __future__ import annotations

import ipaddress

import pytest

from wiretun.wireguard import cookie
from wiretun.wireguard.cookie import (
    COOKIE_REFRESH_TIME,
    NONCE_PREFIX_REPLIES,
    CookieChecker,
    CookieGenerator,
    RateLimiter,
    source_bytes,
)
from wiretun.wireguard.crypto import blake2s_hash, mac, xaead_seal
from wiretun.wireguard.handshake import InitiatorHandshake, StaticIdentity
from wiretun.wireguard.messages import COOKIE_REPLY_SIZE, CookieReply, message_type

ALICE = StaticIdentity.from_private(b"\x0a" * 32)
BOB = StaticIdentity.from_private(b"\x0b" * 32)
SRC = source_bytes(ipaddress.ip_address("192.0.2.7").packed, 51820)
OTHER_SRC = source_bytes(ipaddress.ip_address("192.0.2.8").packed, 51820)


def _initiation() -> bytes:
    return InitiatorHandshake.create(ALICE, BOB.public, None, 42, 1_700_000_000.0).message


def _rng() -> tuple[list[int], CookieChecker]:
    calls: list[int] = []

    def rng(n: int) -> bytes:
        calls.append(n)
        return bytes([len(calls)]) * n

    return calls, CookieChecker(BOB.public, rng=rng)


def test_source_bytes_follow_wg_go_dst_to_bytes() -> None:
    # netip.AddrPort.MarshalBinary: address bytes, then the port little-endian.
    v4 = source_bytes(bytes([192, 0, 2, 7]), 51820)
    assert v4 == bytes([192, 0, 2, 7, 0x6C, 0xCA])  # 51820 = 0xCA6C
    v6 = source_bytes(ipaddress.ip_address("2001:db8::1").packed, 1)
    assert len(v6) == 18
    assert v6[-2:] == b"\x01\x00"


def test_mac1_is_blake2s128_under_the_receivers_key() -> None:
    gen = CookieGenerator(BOB.public)
    msg = gen.add_macs(_initiation(), now=0.0)
    assert len(msg) == 148
    key = blake2s_hash(b"mac1----", BOB.public)
    assert msg[116:132] == mac(key, msg[:116])
    assert msg[132:] == bytes(16)  # no cookie yet: mac2 stays zero
    assert CookieChecker(BOB.public).check_mac1(msg)


def test_wrong_mac1_is_rejected() -> None:
    checker = CookieChecker(BOB.public)
    msg = CookieGenerator(BOB.public).add_macs(_initiation(), now=0.0)
    for i in (0, 50, 115, 116, 131):  # body bytes and mac1 bytes
        bad = bytearray(msg)
        bad[i] ^= 0x80
        assert not checker.check_mac1(bytes(bad))
    assert checker.check_mac1(msg[:116] + msg[116:132] + b"\xff" * 16)  # mac2 not covered
    assert not CookieChecker(ALICE.public).check_mac1(msg)  # meant for someone else
    assert not checker.check_mac1(_initiation())  # macs left at zero
    assert not checker.check_mac1(b"short")


def test_cookie_round_trip_then_mac2_validates() -> None:
    calls, checker = _rng()
    gen = CookieGenerator(BOB.public)
    first = gen.add_macs(bytearray(_initiation()), now=100.0)
    assert checker.check_mac1(first)
    assert not checker.check_mac2(first, SRC, now=100.0)  # no secret yet

    reply = checker.create_reply(first, receiver_index=42, src=SRC, now=100.0)
    assert len(reply) == COOKIE_REPLY_SIZE
    assert message_type(reply) == 3
    parsed = CookieReply.unpack(reply)
    assert parsed.receiver == 42
    # A fresh secret, then the nonce's prefix and its last 8 bytes: all from the injected rng.
    assert calls == [32, 16, 8]
    assert parsed.nonce == bytes([2]) * 16 + bytes([3]) * 8

    assert gen.consume_reply(parsed, now=101.0)
    second = gen.add_macs(_initiation(), now=102.0)
    assert second[132:] != bytes(16)
    assert checker.check_mac1(second)
    assert checker.check_mac2(second, SRC, now=103.0)
    assert not checker.check_mac2(second, OTHER_SRC, now=103.0)  # cookie is bound to the source
    tampered = bytearray(second)
    tampered[10] ^= 1
    assert not checker.check_mac2(bytes(tampered), SRC, now=103.0)


def test_reply_nonces_share_a_prefix_for_a_while_and_stay_unique() -> None:
    # The 16-byte prefix (which alone decides the XChaCha20 subkey) is drawn once per
    # NONCE_PREFIX_REPLIES replies and with each new secret; the last 8 bytes per reply.
    calls: list[int] = []

    def rng(n: int) -> bytes:
        calls.append(n)
        return len(calls).to_bytes(n, "little")

    checker = CookieChecker(BOB.public, rng=rng)
    msg = CookieGenerator(BOB.public).add_macs(_initiation(), 0.0)
    nonces = [
        CookieReply.unpack(checker.create_reply(msg, 1, SRC, 1.0)).nonce
        for _ in range(NONCE_PREFIX_REPLIES + 1)
    ]
    assert calls[:3] == [32, 16, 8]
    assert calls[3 : 2 + NONCE_PREFIX_REPLIES] == [8] * (NONCE_PREFIX_REPLIES - 1)
    assert calls[2 + NONCE_PREFIX_REPLIES :] == [16, 8]  # the prefix's replies are spent
    assert len({n[:16] for n in nonces[:NONCE_PREFIX_REPLIES]}) == 1
    assert nonces[-1][:16] != nonces[0][:16]
    # With the system rng every nonce differs.
    real = CookieChecker(BOB.public)
    assert (
        len({CookieReply.unpack(real.create_reply(msg, 1, SRC, 1.0)).nonce for _ in range(500)})
        == 500
    )
    # A new secret (after 120 s) draws a new prefix too.
    del calls[:]
    checker.create_reply(msg, 1, SRC, 1.0 + COOKIE_REFRESH_TIME + 1)
    assert calls == [32, 16, 8]


def test_reply_is_xchacha20_poly1305_of_the_cookie_under_the_mac1() -> None:
    # Byte for byte what XChaCha20-Poly1305 (crypto.xaead_seal, checked on its own vectors)
    # gives for the reply's own nonce, whether its prefix's cipher was new or kept.
    _, checker = _rng()  # its secret is the first draw: 01 * 32
    msg = CookieGenerator(BOB.public).add_macs(_initiation(), 5.0)
    cookie_key = blake2s_hash(b"cookie--", BOB.public)
    cookie = mac(bytes([1]) * 32, SRC)
    for receiver in (1, 2, 3):
        reply = checker.create_reply(msg, receiver, SRC, 5.0)
        parsed = CookieReply.unpack(reply)
        assert parsed.receiver == receiver
        assert parsed.encrypted_cookie == xaead_seal(cookie_key, parsed.nonce, cookie, msg[116:132])


def test_a_zero_mac2_is_refused_without_computing_macs(monkeypatch: pytest.MonkeyPatch) -> None:
    _, checker = _rng()
    gen = CookieGenerator(BOB.public)
    first = gen.add_macs(_initiation(), 0.0)
    gen.consume_reply(CookieReply.unpack(checker.create_reply(first, 1, SRC, 0.0)), 0.0)
    with_cookie = gen.add_macs(_initiation(), 1.0)
    assert checker.check_mac2(with_cookie, SRC, 1.0)
    macs: list[bytes] = []

    def counting(key: bytes, data: bytes) -> bytes:
        macs.append(key)
        return mac(key, data)

    monkeypatch.setattr(cookie, "mac", counting)
    no_cookie = with_cookie[:-16] + bytes(16)  # the secret is fresh: only the zeros decide
    assert not checker.check_mac2(no_cookie, SRC, 1.0)
    assert macs == []
    assert checker.check_mac2(with_cookie, SRC, 1.0)
    assert len(macs) == 2  # the cookie for the source, then mac2 under it


def test_cookie_and_secret_expire_after_two_minutes() -> None:
    _, checker = _rng()
    gen = CookieGenerator(BOB.public)
    first = gen.add_macs(_initiation(), now=0.0)
    assert gen.consume_reply(CookieReply.unpack(checker.create_reply(first, 1, SRC, 0.0)), 0.0)

    fresh = gen.add_macs(_initiation(), now=COOKIE_REFRESH_TIME)
    assert checker.check_mac2(fresh, SRC, now=COOKIE_REFRESH_TIME)
    # The responder's secret is 120 s old: every mac2 fails until a new reply is made.
    assert not checker.check_mac2(fresh, SRC, now=COOKIE_REFRESH_TIME + 1)
    # The sender stops using a cookie older than 120 s.
    stale = gen.add_macs(_initiation(), now=COOKIE_REFRESH_TIME + 1)
    assert stale[132:] == bytes(16)


def test_new_secret_after_refresh_invalidates_old_cookies() -> None:
    calls, checker = _rng()
    gen = CookieGenerator(BOB.public)
    m = gen.add_macs(_initiation(), 0.0)
    gen.consume_reply(CookieReply.unpack(checker.create_reply(m, 1, SRC, 0.0)), 0.0)
    m_old_cookie = gen.add_macs(_initiation(), 1.0)
    checker.create_reply(m, 1, SRC, 200.0)  # secret re-drawn
    assert calls.count(32) == 2
    assert not checker.check_mac2(m_old_cookie, SRC, 201.0)


def test_reply_must_answer_the_last_mac1() -> None:
    _, checker = _rng()
    gen = CookieGenerator(BOB.public)
    orphan = CookieReply.unpack(checker.create_reply(_initiation()[:-32] + bytes(32), 1, SRC, 0))
    assert not gen.consume_reply(orphan, 0.0)  # nothing sent yet

    old = gen.add_macs(_initiation(), 0.0)
    reply_to_old = CookieReply.unpack(checker.create_reply(old, 1, SRC, 0.0))
    gen.add_macs(_initiation(), 1.0)  # a newer message (new ephemeral, new mac1)
    assert not gen.consume_reply(reply_to_old, 1.0)

    latest = gen.add_macs(_initiation(), 2.0)
    good = CookieReply.unpack(checker.create_reply(latest, 1, SRC, 2.0))
    bad = CookieReply(good.receiver, good.nonce, good.encrypted_cookie[:-1] + b"\x00")
    assert not gen.consume_reply(bad, 2.0)
    assert not CookieGenerator(ALICE.public).consume_reply(good, 2.0)
    assert gen.consume_reply(good, 2.0)


def test_add_macs_rejects_short_messages() -> None:
    with pytest.raises(ValueError, match="short"):
        CookieGenerator(BOB.public).add_macs(b"x" * 31, 0.0)


IP = bytes([10, 0, 0, 1])
COST = 1 / 20


def test_rate_limiter_follows_wg_go_sequence() -> None:
    # The sequence of wireguard-go ratelimiter/ratelimiter_test.go, with an exact clock.
    rl = RateLimiter()
    now = 10.0
    assert all(rl.allow(IP, now) for _ in range(5))  # initial burst
    assert not rl.allow(IP, now)  # after burst
    now += COST
    assert rl.allow(IP, now)  # refilled one packet
    assert not rl.allow(IP, now)
    now += 2 * COST
    assert rl.allow(IP, now)
    assert rl.allow(IP, now)  # two packet burst
    assert not rl.allow(IP, now)


def test_rate_limiter_is_per_source_and_groups_ipv6_by_prefix() -> None:
    rl = RateLimiter()
    for _ in range(5):
        assert rl.allow(IP, 0.0)
    assert not rl.allow(IP, 0.0)
    assert rl.allow(bytes([10, 0, 0, 2]), 0.0)
    a = ipaddress.ip_address("2001:db8:1:2::1").packed
    b = ipaddress.ip_address("2001:db8:1:2:ffff::9").packed  # same /64
    c = ipaddress.ip_address("2001:db8:1:3::1").packed
    assert all(rl.allow(a, 0.0) for _ in range(5))
    assert not rl.allow(b, 0.0)
    assert rl.allow(c, 0.0)
    assert rl.allow(IP, 1.0)  # a second later the bucket is full again


def test_rate_limiter_memory_is_bounded() -> None:
    rl = RateLimiter(max_entries=100)
    allowed = [rl.allow(i.to_bytes(4, "big"), 0.0) for i in range(150)]
    assert allowed == [True] * 100 + [False] * 50
    assert len(rl) == 100
    # Idle entries are collected after a second, making room for new sources.
    assert rl.allow(b"\xff\xff\xff\xff", 1.5)
    assert len(rl) == 1
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(packets_per_second=0)
