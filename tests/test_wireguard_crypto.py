"""WireGuard primitives against published vectors: wg-go KDF, XChaCha draft, TAI64N, keys."""

from __future__ import annotations

import ast
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st

from wiretun.wireguard import crypto
from wiretun.wireguard.crypto import (
    AeadKey,
    X25519Key,
    aead_open,
    aead_seal,
    blake2s_hash,
    dh,
    generate_private_key,
    hchacha20,
    hmac_blake2s,
    kdf1,
    kdf2,
    kdf3,
    mac,
    public_key,
    tai64n,
    xaead_open,
    xaead_seal,
)
from wiretun.wireguard.errors import CryptoError
from wiretun.wireguard.keys import key_from_base64, key_from_hex, key_to_base64, key_to_hex

# wireguard-go device/kdf_test.go (TestKDF): key, input, t0, t1, t2, all hex.
KDF_VECTORS = [
    (
        "746573742d6b6579",
        "746573742d696e707574",
        "6f0e5ad38daba1bea8a0d213688736f19763239305e0f58aba697f9ffc41c633",
        "df1194df20802a4fe594cde27e92991c8cae66c366e8106aaa937a55fa371e8a",
        "fac6e2745a325f5dc5d11a5b165aad08b0ada28e7b4e666b7c077934a4d76c24",
    ),
    (
        "776972656775617264",
        "776972656775617264",
        "491d43bbfdaa8750aaf535e334ecbfe5129967cd64635101c566d4caefda96e8",
        "1e71a379baefd8a79aa4662212fcafe19a23e2b609a3db7d6bcba8f560e3d25f",
        "31e1ae48bddfbe5de38f295e5452b1909a1b4e38e183926af3780b0c1e1f0160",
    ),
    (
        "",
        "",
        "8387b46bf43eccfcf349552a095d8315c4055beb90208fb1be23b894bc2ed5d0",
        "58a0e5f6faefccf4807bff1f05fa8a9217945762040bcec2f4b4a62bdfe0e86e",
        "0ce6ea98ec548f8e281e93e32db65621c45eb18dc6f0a7ad94178610a2f7338e",
    ),
]


@pytest.mark.parametrize(("key", "data", "t0", "t1", "t2"), KDF_VECTORS)
def test_kdf_matches_wireguard_go(key: str, data: str, t0: str, t1: str, t2: str) -> None:
    k, d = bytes.fromhex(key), bytes.fromhex(data)
    assert kdf1(k, d).hex() == t0
    assert [x.hex() for x in kdf2(k, d)] == [t0, t1]
    assert [x.hex() for x in kdf3(k, d)] == [t0, t1, t2]


def test_hmac_blake2s_is_rfc2104_over_blake2s() -> None:
    # Written out by hand (block size 64) so the check does not reuse the hmac module.
    key, data = b"k" * 20, b"message"
    padded = key.ljust(64, b"\x00")
    inner = hashlib.blake2s(bytes(b ^ 0x36 for b in padded) + data).digest()
    outer = hashlib.blake2s(bytes(b ^ 0x5C for b in padded) + inner).digest()
    assert hmac_blake2s(key, data) == outer


def test_hash_and_mac() -> None:
    assert blake2s_hash(b"ab", b"", b"c") == hashlib.blake2s(b"abc").digest()
    m = mac(b"\x01" * 32, b"data")
    assert len(m) == 16
    assert m == hashlib.blake2s(b"data", digest_size=16, key=b"\x01" * 32).digest()
    assert m != mac(b"\x02" * 32, b"data")


# draft-irtf-cfrg-xchacha-03 §2.2.1 (HChaCha20 test vector).
HCHACHA_KEY = bytes(range(32))
HCHACHA_NONCE = bytes.fromhex("000000090000004a0000000031415927")
HCHACHA_SUBKEY = "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"

# draft-irtf-cfrg-xchacha-03 §A.3.1 (AEAD_XChaCha20_Poly1305 test vector).
XAEAD_PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
    b"future, sunscreen would be it."
)
XAEAD_AD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
XAEAD_KEY = bytes(range(0x80, 0xA0))
XAEAD_NONCE = bytes(range(0x40, 0x58))
XAEAD_CIPHERTEXT = (
    "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
    "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
    "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
    "21f9664c97637da9768812f615c68b13b52e"
)
XAEAD_TAG = "c0875924c1c7987947deafd8780acf49"


def test_hchacha20_draft_vector() -> None:
    assert hchacha20(HCHACHA_KEY, HCHACHA_NONCE).hex() == HCHACHA_SUBKEY


def test_xchacha20_poly1305_draft_vector() -> None:
    sealed = xaead_seal(XAEAD_KEY, XAEAD_NONCE, XAEAD_PLAINTEXT, XAEAD_AD)
    assert sealed[:-16].hex() == XAEAD_CIPHERTEXT
    assert sealed[-16:].hex() == XAEAD_TAG
    assert xaead_open(XAEAD_KEY, XAEAD_NONCE, sealed, XAEAD_AD) == XAEAD_PLAINTEXT


def test_xaead_rejects_tampering_and_bad_sizes() -> None:
    sealed = xaead_seal(XAEAD_KEY, XAEAD_NONCE, b"cookie-cookie-16", b"ad")
    flipped = bytes([sealed[0] ^ 1]) + sealed[1:]
    with pytest.raises(CryptoError):
        xaead_open(XAEAD_KEY, XAEAD_NONCE, flipped, b"ad")
    with pytest.raises(CryptoError):
        xaead_open(XAEAD_KEY, XAEAD_NONCE, sealed, b"other ad")
    with pytest.raises(CryptoError):
        xaead_open(XAEAD_KEY, XAEAD_NONCE[:-1] + b"\x00", sealed, b"ad")
    with pytest.raises(CryptoError):
        xaead_open(XAEAD_KEY, XAEAD_NONCE[:12], sealed, b"ad")
    with pytest.raises(CryptoError):
        xaead_open(XAEAD_KEY, XAEAD_NONCE, sealed[:10], b"ad")


def test_aead_nonce_layout_is_zero_prefix_and_u64le_counter() -> None:
    key = bytes(range(32))
    counter = 0x0102030405060708
    nonce = b"\x00\x00\x00\x00" + bytes([8, 7, 6, 5, 4, 3, 2, 1])
    expected = ChaCha20Poly1305(key).encrypt(nonce, b"payload", b"ad")
    assert aead_seal(key, counter, b"payload", b"ad") == expected
    assert aead_open(key, counter, expected, b"ad") == b"payload"
    assert AeadKey(key).seal(counter, b"payload", b"ad") == expected


def test_aead_failures_raise_crypto_error() -> None:
    key = bytes(32)
    sealed = aead_seal(key, 5, b"x" * 40, b"")
    assert len(sealed) == 56
    with pytest.raises(CryptoError):
        aead_open(key, 6, sealed, b"")  # wrong counter
    with pytest.raises(CryptoError):
        aead_open(b"\x01" * 32, 5, sealed, b"")  # wrong key
    with pytest.raises(CryptoError):
        aead_open(key, 5, sealed[:15], b"")  # shorter than a tag
    with pytest.raises(CryptoError):
        aead_seal(b"short", 0, b"", b"")
    with pytest.raises(CryptoError):
        aead_seal(key, 1 << 64, b"", b"")
    with pytest.raises(CryptoError):
        aead_seal(key, -1, b"", b"")
    assert aead_seal(key, (1 << 64) - 1, b"", b"")  # the largest counter is still a nonce


def test_aead_keepalive_is_just_a_tag() -> None:
    key = bytes(range(32))
    sealed = aead_seal(key, 0, b"", b"")
    assert len(sealed) == 16
    assert aead_open(key, 0, sealed, b"") == b""


def _counting_rng() -> crypto.Rng:
    state = [0]

    def rng(n: int) -> bytes:
        out = bytes((state[0] + i) & 0xFF for i in range(n))
        state[0] += n
        return out

    return rng


def test_generated_keys_are_clamped_and_deterministic_with_injected_rng() -> None:
    a = generate_private_key(_counting_rng())
    assert a == generate_private_key(_counting_rng())
    assert a[0] & 7 == 0
    assert a[31] & 0x80 == 0
    assert a[31] & 0x40
    assert len(generate_private_key()) == 32
    with pytest.raises(CryptoError):
        generate_private_key(lambda n: b"\x00" * (n - 1))


def test_dh_agrees_both_ways_and_rejects_low_order_points() -> None:
    a, b = generate_private_key(), generate_private_key()
    shared = dh(a, public_key(b))
    assert shared == dh(b, public_key(a))
    assert len(shared) == 32
    with pytest.raises(CryptoError):
        dh(a, bytes(32))  # the zero point gives an all-zero secret
    with pytest.raises(CryptoError):
        dh(a, b"\x01" + bytes(31))  # u = 1 has order 4
    with pytest.raises(CryptoError):
        dh(a, bytes(31))
    with pytest.raises(CryptoError):
        public_key(b"too short")


def test_a_loaded_key_is_the_same_x25519_as_raw_bytes() -> None:
    # RFC 7748 §6.1: Alice's and Bob's keys and their shared secret.
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob_public = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = "4a5d9d5b a4ce2de1 728e3bf4 80350f25 e07e21c9 47d19e33 76f09b3c 1e161742"
    key = X25519Key(alice)
    assert key.public.hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert key.public == public_key(alice)
    assert key.exchange(bob_public).hex() == shared.replace(" ", "")
    assert dh(key, bob_public) == dh(alice, bob_public)
    assert alice.hex() not in repr(key) and key.public.hex() in repr(key)
    with pytest.raises(CryptoError):
        key.exchange(bytes(32))  # low order: an all-zero secret
    with pytest.raises(CryptoError):
        key.exchange(bytes(31))
    with pytest.raises(CryptoError):
        X25519Key(b"too short")


@pytest.mark.skipif(shutil.which("wg") is None, reason="needs wg(8) from wireguard-tools")
def test_keys_agree_with_wg_tools() -> None:
    private_b64 = subprocess.run(
        ["wg", "genkey"], capture_output=True, text=True, check=True
    ).stdout.strip()
    public_b64 = subprocess.run(
        ["wg", "pubkey"], input=private_b64 + "\n", capture_output=True, text=True, check=True
    ).stdout.strip()
    private = key_from_base64(private_b64)
    assert key_to_base64(public_key(private)) == public_b64
    assert generate_private_key(lambda n: private) == private  # wg genkey output is clamped


def test_tai64n_format() -> None:
    assert tai64n(0.0).hex() == "400000000000000a" + "00000000"
    stamp = tai64n(1_700_000_000.75)
    assert len(stamp) == 12
    assert int.from_bytes(stamp[:8], "big") == 0x400000000000000A + 1_700_000_000
    nanos = int.from_bytes(stamp[8:], "big")
    assert nanos & 0xFFFFFF == 0  # whitened like wg-go
    assert 750_000_000 - (1 << 24) < nanos <= 750_000_000
    with pytest.raises(ValueError, match="wall_time"):
        tai64n(float("nan"))


@given(
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
    st.floats(min_value=0.017, max_value=1e6, allow_nan=False),
)
def test_tai64n_is_monotonic(t: float, dt: float) -> None:
    # Steps larger than the 2^24 ns whitening granularity must compare strictly greater,
    # byte-wise, which is how the responder compares them.
    assert tai64n(t) <= tai64n(t + dt / 2)
    assert tai64n(t) < tai64n(t + dt)


def test_base64_and_hex_keys() -> None:
    key = bytes(range(32))
    text = key_to_base64(key)
    assert len(text) == 44
    assert key_from_base64(text) == key
    assert key_from_base64(f"  {text}\n") == key
    assert key_to_hex(key) == key.hex()
    assert key_from_hex(key.hex()) == key
    assert key_from_hex(key.hex().upper()) == key
    for bad in ["", text[:-1], text[:-2] + "==", "!" + text[1:], text + "="]:
        with pytest.raises(ValueError, match="key"):
            key_from_base64(bad)
    for bad_hex in ["", key.hex()[:-2], "zz" + key.hex()[2:], " " + key.hex()[1:]]:
        with pytest.raises(ValueError, match="hex"):
            key_from_hex(bad_hex)
    with pytest.raises(ValueError, match="bytes"):
        key_to_hex(b"short")


FORBIDDEN_IMPORTS = {"socket", "os", "asyncio", "threading", "select", "time"}
MY_MODULES = ["crypto", "messages", "handshake", "cookie", "keys", "errors"]


@pytest.mark.parametrize("name", MY_MODULES)
def test_core_modules_do_no_io_imports(name: str) -> None:
    path = Path(crypto.__file__).with_name(f"{name}.py")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported, "parsed no imports at all"
    assert not imported & FORBIDDEN_IMPORTS
