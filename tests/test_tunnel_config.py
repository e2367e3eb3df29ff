"""wg-quick config parsing: the sample files, every error path, warnings and the fuzzer."""

from __future__ import annotations

import base64
import ipaddress
import os
import socket
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wiretun.tunnel.config import (
    ConfigError,
    load_config,
    parse_config,
    resolve_endpoint,
)

DATA = Path(__file__).parent / "data" / "configs"

# Keys made with `wg genkey` / `wg pubkey` / `wg genpsk` (wireguard-tools v1.0.20210914).
PRIV1 = "4Cb6HXpToPFrwjVch+a1gI9TS1tXKYn+u4/qWftbuW4="
PUB1 = "whfRkAvtsx3Cblt9O//zEeO0QAVTCHmBo8ncjCw23UQ="
PUB2 = "BDU8H/VB+PjZSlFV55N3qyOHYXtlNMTngERTvM8aaxA="
PUB3 = "CQIGzX+4JggTY8w0ltnu4+Dck78nEkwDeAFtfzhb4QQ="
PUB4 = "arDpsSOEonaX7ppkEBe9kBELHshbhH/RLFWLMrqsBWM="
PSK = "m/4R0fZE2a4sckBYGIHe9oI+whU9jRFfo2PkvZktADs="


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_full_sample() -> None:
    cfg = load_config(DATA / "wg0.conf")
    iface = cfg.interface
    assert iface.name == "wg0"
    assert b64(iface.private_key) == PRIV1
    assert b64(iface.public_key) == PUB1
    assert iface.listen_port == 51820
    assert iface.addresses == (
        ipaddress.ip_interface("10.0.0.1/24"),
        ipaddress.ip_interface("fd00:10::1/64"),
        ipaddress.ip_interface("10.0.1.1/24"),
    )
    assert iface.mtu == 1420
    assert iface.fwmark == 0x1234
    assert iface.table == "off"

    assert [b64(p.public_key) for p in cfg.peers] == [PUB2, PUB3, PUB4]
    laptop, site, default = cfg.peers
    assert laptop.preshared_key is not None and b64(laptop.preshared_key) == PSK
    assert laptop.allowed_ips == (
        ipaddress.ip_network("10.0.0.2/32"),
        ipaddress.ip_network("fd00:10::2/128"),
    )
    assert laptop.endpoint == ("192.0.2.10", 51820)
    assert laptop.persistent_keepalive == 25

    assert site.preshared_key is None
    # Repeated AllowedIPs accumulate; host bits are masked off as wg does.
    assert site.allowed_ips == (
        ipaddress.ip_network("10.1.0.0/16"),
        ipaddress.ip_network("10.2.0.0/16"),
    )
    assert site.endpoint == ("2001:db8::1", 4500)
    assert site.persistent_keepalive is None

    assert default.allowed_ips == (
        ipaddress.ip_network("0.0.0.0/0"),
        ipaddress.ip_network("::/0"),
    )
    assert default.endpoint == ("vpn.example.com", 51820)
    assert default.persistent_keepalive is None

    assert [str(w) for w in cfg.warnings if "host bits" in w.message] == [
        f"{DATA / 'wg0.conf'}:22: [Peer] AllowedIPs: '10.2.0.5/16' has host bits set; "
        "using 10.2.0.0/16"
    ]


def test_minimal_sample_defaults() -> None:
    cfg = parse_config((DATA / "minimal.conf").read_text(), "minimal.conf")
    assert cfg.interface.name == "minimal"
    assert cfg.interface.listen_port is None
    assert cfg.interface.addresses == ()
    assert cfg.interface.mtu is None
    assert cfg.interface.fwmark is None
    assert cfg.interface.table == "auto"
    assert cfg.peers == ()
    assert cfg.warnings == ()


def test_wg_quick_keys_are_parsed_not_warned_about() -> None:
    cfg = parse_config((DATA / "wgquick.conf").read_text(), "wgquick.conf")
    assert cfg.warnings == ()
    iface = cfg.interface
    assert iface.dns == ("10.8.0.1",) and iface.dns_search == ("example.internal",)
    assert iface.pre_up == ("echo pre-up",)
    # wg-quick cuts hooks at '#' too: the comment is not part of the command.
    assert iface.post_up == ("iptables -A FORWARD -i %i -j ACCEPT",)
    assert iface.pre_down == ("echo pre-down",)
    assert iface.post_down == ("iptables -D FORWARD -i %i -j ACCEPT",)
    assert iface.save_config is False and iface.table_given
    assert cfg.interface.table == 1234
    assert cfg.peers[0].endpoint == ("198.51.100.7", 51820)


def test_private_keys_never_in_repr() -> None:
    cfg = load_config(DATA / "wg0.conf")
    text = repr(cfg) + str(cfg)
    assert PRIV1 not in text
    assert cfg.interface.private_key.hex() not in text
    assert PSK not in text
    assert cfg.peers[0].preshared_key is not None
    assert cfg.peers[0].preshared_key.hex() not in text


HEAD = f"[Interface]\nPrivateKey = {PRIV1}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # The example from the issue: line 7 is the bad AllowedIPs.
        (
            HEAD + f"ListenPort = 1\n\n[Peer]\nPublicKey = {PUB2}\nAllowedIPs = 10.0.0.0/33\n",
            "wg0.conf:7: [Peer] AllowedIPs: '10.0.0.0/33' is not a valid network",
        ),
        (
            HEAD + f"[Peer]\nPublicKey = {PUB2}\nAllowedIPs = 10.0.0.0/8, fd00::/129\n",
            "wg0.conf:5: [Peer] AllowedIPs: 'fd00::/129' is not a valid network",
        ),
        (
            HEAD + f"[Peer]\nPublicKey = {PUB2}\nAllowedIPs = 10.0.0.0/8, banana\n",
            "wg0.conf:5: [Peer] AllowedIPs: 'banana' is not a valid network",
        ),
        ("[Interface]\nListenPort = 5\n", "wg0.conf:1: [Interface] PrivateKey: missing"),
        ("# nothing\n", "wg0.conf: no [Interface] section"),
        (
            HEAD + "[Peer]\nAllowedIPs = 10.0.0.0/8\n",
            "wg0.conf:3: [Peer] PublicKey: missing",
        ),
        (
            HEAD + f"[Peer]\nPublicKey = {PUB2}\n[Peer]\nPublicKey = {PUB2}\n",
            "wg0.conf:6: [Peer] PublicKey: duplicate peer: the peer at line 3 has the same "
            "public key",
        ),
        (
            HEAD + f"[Peer]\nPublicKey = {PUB1}\n",
            "wg0.conf:4: [Peer] PublicKey: is this interface's own public key",
        ),
        (
            HEAD + "[Peer]\nPublicKey = abc=\n",
            "wg0.conf:4: [Peer] PublicKey: not a valid key (base64 of 32 bytes)",
        ),
        (
            # 44 characters but the last one carries non-zero spare bits: wg rejects it.
            HEAD + f"[Peer]\nPublicKey = {PUB2[:42]}B=\n",
            "wg0.conf:4: [Peer] PublicKey: not a valid key (base64 of 32 bytes)",
        ),
        (
            HEAD + f"[Peer]\nPublicKey = {PUB2}\nPresharedKey = {PUB2[:-2]}\n",
            "wg0.conf:5: [Peer] PresharedKey: not a valid key (base64 of 32 bytes)",
        ),
        (
            HEAD + "ListenPort = 65536\n",
            "wg0.conf:3: [Interface] ListenPort: '65536' is not a valid port (0..65535)",
        ),
        (
            HEAD + "ListenPort = -1\n",
            "wg0.conf:3: [Interface] ListenPort: '-1' is not a valid port (0..65535)",
        ),
        (HEAD + "MTU = 40\n", "wg0.conf:3: [Interface] MTU: '40' is not a valid MTU (68..65535)"),
        (
            HEAD + "FwMark = 0x100000000\n",
            "wg0.conf:3: [Interface] FwMark: '0x100000000' is neither off nor 0..0xffffffff",
        ),
        (
            HEAD + "FwMark = 12ab\n",
            "wg0.conf:3: [Interface] FwMark: '12ab' is neither off nor 0..0xffffffff",
        ),
        (
            HEAD + "Table = 12 34\n",
            "wg0.conf:3: [Interface] Table: '12 34' is neither off, auto, a table number nor "
            "a table name",
        ),
        (
            HEAD + "Address = 10.0.0.300/24\n",
            "wg0.conf:3: [Interface] Address: '10.0.0.300/24' is not a valid address",
        ),
        (
            HEAD + f"[Peer]\nPublicKey = {PUB2}\nPersistentKeepalive = 65536\n",
            "wg0.conf:5: [Peer] PersistentKeepalive: '65536' is not a valid keepalive interval "
            "in seconds (0..65535)",
        ),
        (
            HEAD + f"[Peer]\nPublicKey = {PUB2}\nEndpoint = 192.0.2.1\n",
            "wg0.conf:5: [Peer] Endpoint: '192.0.2.1' is not host:port or [IPv6]:port",
        ),
        (
            HEAD + f"[Peer]\nPublicKey = {PUB2}\nEndpoint = 192.0.2.1:0\n",
            "wg0.conf:5: [Peer] Endpoint: '0' is not a valid port (1..65535)",
        ),
        (
            HEAD + f"[Peer]\nPublicKey = {PUB2}\nEndpoint = 2001:db8::1:51820\n",
            "wg0.conf:5: [Peer] Endpoint: '2001:db8::1:51820': write an IPv6 endpoint as "
            "[address]:port",
        ),
        (
            HEAD + f"[Peer]\nPublicKey = {PUB2}\nEndpoint = [2001:db8::1]51820\n",
            "wg0.conf:5: [Peer] Endpoint: '[2001:db8::1]51820' is not host:port or [IPv6]:port",
        ),
        (
            HEAD + f"[Peer]\nPublicKey = {PUB2}\nEndpoint = 10.0.0.256:5\n",
            "wg0.conf:5: [Peer] Endpoint: '10.0.0.256' in '10.0.0.256:5' is not an IPv4 address",
        ),
        (
            HEAD + f"[Peer]\nPublicKey = {PUB2}\nEndpoint = bad_host!:5\n",
            "wg0.conf:5: [Peer] Endpoint: 'bad_host!' in 'bad_host!:5' is not an IP address or "
            "hostname",
        ),
        (HEAD + "Colour = blue\n", "wg0.conf:3: [Interface] Colour: unknown key"),
        (
            HEAD + f"[Peer]\nPublicKey = {PUB2}\nDNS = 1.1.1.1\n",
            "wg0.conf:5: [Peer] DNS: unknown key",
        ),
        (
            HEAD + "ListenPort = 1\nlistenport = 2\n",
            "wg0.conf:4: [Interface] ListenPort: given more than once in this section",
        ),
        (
            HEAD + "[Interface]\n",
            "wg0.conf:3: second [Interface] section (the first is at line 1)",
        ),
        (
            HEAD + "[Peers]\n",
            "wg0.conf:3: unknown section '[Peers]' (expected [Interface] or [Peer])",
        ),
        (
            "ListenPort = 1\n" + HEAD,
            "wg0.conf:1: 'ListenPort' outside of an [Interface] or [Peer] section",
        ),
        (
            HEAD + "just words\n",
            "wg0.conf:3: expected 'Key = Value' or a [Section], got 'just words'",
        ),
    ],
)
def test_errors_name_file_line_and_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "wg0.conf")
    assert str(info.value) == message


def test_bad_private_key_is_not_echoed() -> None:
    secret = PRIV1[:-2] + "x="
    with pytest.raises(ConfigError) as info:
        parse_config(f"[Interface]\nPrivateKey = {secret}\n", "wg0.conf")
    assert (
        str(info.value)
        == "wg0.conf:2: [Interface] PrivateKey: not a valid key (base64 of 32 bytes)"
    )
    assert secret not in str(info.value)
    assert info.value.line == 2
    assert info.value.field == "[Interface] PrivateKey"


@pytest.mark.parametrize("name", ["wg0", "a", "x" * 15, "we_ird=+.-0"])
def test_valid_interface_names(name: str) -> None:
    assert parse_config(HEAD, f"/etc/wireguard/{name}.conf").interface.name == name


@pytest.mark.parametrize(
    "filename", ["x" * 16 + ".conf", "bad name.conf", "wg:0.conf", ".conf", "..conf"]
)
def test_invalid_interface_names(filename: str) -> None:
    with pytest.raises(ConfigError, match="is not a valid interface name"):
        parse_config(HEAD, filename)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "wt0.conf"
    path.write_bytes(b"\xef\xbb\xbf" + HEAD.encode())
    path.chmod(0o600)
    config = load_config(path)
    assert config.interface.name == "wt0"
    assert config.warnings == ()
    assert parse_config("\ufeff" + HEAD, "wt0.conf") == parse_config(HEAD, "wt0.conf")


def test_name_override() -> None:
    assert parse_config(HEAD, "whatever file.txt", name="wt7").interface.name == "wt7"


def test_keepalive_zero_is_off_and_fwmark_off() -> None:
    cfg = parse_config(
        HEAD + f"FwMark = off\n[Peer]\nPublicKey = {PUB2}\nPersistentKeepalive = 0\n", "wg0.conf"
    )
    assert cfg.interface.fwmark == 0
    assert cfg.peers[0].persistent_keepalive is None


def test_table_forms() -> None:
    for value, expected in [("auto", "auto"), ("OFF", "off"), ("51820", 51820), ("vpn", "vpn")]:
        assert parse_config(HEAD + f"Table = {value}\n", "wg0.conf").interface.table == expected


def test_empty_allowed_ips_and_scoped_endpoint() -> None:
    cfg = parse_config(
        HEAD + f"[Peer]\nPublicKey = {PUB2}\nAllowedIPs =\nEndpoint = [fe80::1%eth0]:7\n",
        "wg0.conf",
    )
    assert cfg.peers[0].allowed_ips == ()
    assert cfg.peers[0].endpoint == ("fe80::1%eth0", 7)


def test_network_claimed_by_two_peers_warns() -> None:
    cfg = parse_config(
        HEAD + f"[Peer]\nPublicKey = {PUB2}\nAllowedIPs = 10.0.0.0/8\n"
        f"[Peer]\nPublicKey = {PUB3}\nAllowedIPs = 10.0.0.0/8\n",
        "wg0.conf",
    )
    assert [str(w) for w in cfg.warnings] == [
        "wg0.conf:6: [Peer] AllowedIPs: 10.0.0.0/8 is also claimed by the peer at line 3; "
        "the later peer gets it"
    ]


def test_permission_warning(tmp_path: Path) -> None:
    path = tmp_path / "wt0.conf"
    path.write_text(HEAD)
    os.chmod(path, 0o600)
    assert load_config(path).warnings == ()
    os.chmod(path, 0o644)
    warnings = load_config(path).warnings
    assert [str(w) for w in warnings] == [
        f"{path}: contains a PrivateKey and is readable by group or others (mode 0644); "
        "chmod 600 it"
    ]


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(tmp_path / "missing.conf")
    assert isinstance(info.value.__cause__, FileNotFoundError)
    path = tmp_path / "wt1.conf"
    path.write_bytes(HEAD.encode() + b"# caf\xe9\n")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match=r"wt1.conf:3: not valid UTF-8"):
        load_config(path)


def test_resolve_endpoint() -> None:
    assert resolve_endpoint("127.0.0.1", 51820) == ("127.0.0.1", 51820)
    assert resolve_endpoint("::1", 7) == ("::1", 7)
    host, port = resolve_endpoint("localhost", 9)
    assert port == 9
    assert ipaddress.ip_address(host).is_loopback
    with pytest.raises(OSError):
        resolve_endpoint("no-such-host.invalid", 1)
    assert issubclass(socket.gaierror, OSError)


LINE_PIECES = st.sampled_from(
    [
        "[Interface]",
        "[Peer]",
        "[peer",
        f"PrivateKey = {PRIV1}",
        f"PublicKey = {PUB2}",
        f"PublicKey = {PUB3}",
        "PublicKey = ",
        "AllowedIPs = 10.0.0.0/8, ::/0",
        "AllowedIPs = 1.2.3.4/99",
        "Endpoint = [::1]:5",
        "Endpoint = :",
        "Endpoint = []:",
        "ListenPort = 99999",
        "FwMark = 0x",
        "Table = ",
        "DNS = 1.1.1.1",
        "= value",
        "#",
        "",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(LINE_PIECES, st.text(max_size=30)), max_size=12))
def test_fuzz_only_config_errors(lines: list[str]) -> None:
    """Any text either parses or raises ConfigError: no other exception escapes."""
    try:
        cfg = parse_config("\n".join(lines), "fz.conf")
    except ConfigError as exc:
        assert str(exc).startswith("fz.conf")
    else:
        assert cfg.interface.name == "fz"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("SaveConfig = yes", "SaveConfig: 'yes' is neither true nor false"),
        (
            "DNS = 10.0.0.300",
            "DNS: '10.0.0.300' is not a valid DNS server address",
        ),
        (
            "DNS = bad/name",
            "DNS: 'bad/name' is neither a DNS server address nor a search domain",
        ),
    ],
)
def test_bad_wg_quick_values_name_file_line_and_field(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"[Interface]\nPrivateKey = {PRIV1}\n{line}\n", "wg0.conf")
    assert str(info.value) == f"wg0.conf:3: [Interface] {message}"


def test_hooks_and_dns_repeat_in_order() -> None:
    text = (
        f"[Interface]\nPrivateKey = {PRIV1}\nPostUp = a\nDNS = 1.1.1.1\nPostUp = b\n"
        "DNS = 9.9.9.9 x.example\nSaveConfig = True\n"
    )
    iface = parse_config(text, "wg0.conf").interface
    assert iface.post_up == ("a", "b")
    assert iface.dns == ("1.1.1.1", "9.9.9.9") and iface.dns_search == ("x.example",)
    assert iface.save_config is True and not iface.table_given
