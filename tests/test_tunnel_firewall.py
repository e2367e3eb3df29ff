"""The nftables script for a full tunnel: wg-quick's add_default rules, per family."""

from __future__ import annotations

from wiretun.tunnel.firewall import ruleset, table_name


def test_ipv4_ruleset_is_wg_quicks() -> None:
    script = ruleset(4, "wg0", 51820, ["10.9.0.1/24", "fd00:9::1/64", "10.8.0.1/32"])
    t = f"ip {table_name('wg0')}"
    assert script.splitlines() == [
        f"add table {t}",
        f"add chain {t} preraw {{ type filter hook prerouting priority -300; }}",
        f"add chain {t} premangle {{ type filter hook prerouting priority -150; }}",
        f"add chain {t} postmangle {{ type filter hook postrouting priority -150; }}",
        f'add rule {t} preraw iifname != "wg0" ip daddr 10.9.0.1 fib saddr type != local drop',
        f'add rule {t} preraw iifname != "wg0" ip daddr 10.8.0.1 fib saddr type != local drop',
        f"add rule {t} postmangle meta l4proto udp mark 51820 ct mark set mark",
        f"add rule {t} premangle meta l4proto udp meta mark set ct mark",
    ]


def test_ipv6_ruleset_takes_only_ipv6_addresses() -> None:
    script = ruleset(6, "wg0", 7, ["10.9.0.1/24", "fd00:9::1/64"])
    assert script.startswith("add table ip6 wiretun-wg0\n")
    drops = [line for line in script.splitlines() if "preraw iifname" in line]
    assert drops == [
        'add rule ip6 wiretun-wg0 preraw iifname != "wg0" ip6 daddr fd00:9::1 '
        "fib saddr type != local drop"
    ]
    assert "udp mark 7 ct mark set mark" in script
