"""`wiretun demo`: a wiretun tunnel to Debian's wireguard-go inside throwaway namespaces."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import time

from wiretun.testing.netns import NetNS, Topology
from wiretun.testing.wgpeer import (
    PeerSpec,
    WireguardGoPeer,
    WiretunPeer,
    generate_psk,
    udp_ping,
)

LEFT_UNDER, RIGHT_UNDER = "192.168.241.1", "192.168.241.2"
LEFT_OVER, RIGHT_OVER = "10.9.0.1", "10.9.0.2"
LEFT_OVER6, RIGHT_OVER6 = "fd00:9::1", "fd00:9::2"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--time", type=int, default=3, help="seconds per iperf3 run")


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _iperf(client: NetNS, server: NetNS, addr: str, seconds: int, reverse: bool) -> str:
    srv = server.popen("iperf3", "-s", "-1", "-B", addr, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while "5201" not in server.run("ss", "-ltnH"):
            if time.monotonic() > deadline:
                return "iperf3 server did not start"
            time.sleep(0.05)
        args = ["iperf3", "-c", addr, "-t", str(seconds), "-J"] + (["-R"] if reverse else [])
        end = json.loads(client.run(*args, timeout=seconds + 30))["end"]
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.wait()
    gbits = end["sum_received"]["bits_per_second"] / 1e9
    return f"{gbits:.2f} Gbit/s, {end['sum_sent'].get('retransmits', 0)} retransmits"


def run(args: argparse.Namespace) -> int:
    missing = [t for t in ("ip", "wireguard-go", "wg", "iperf3") if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        print(f"wiretun demo needs root and {', '.join(missing) or 'nothing else'}")
        return 1
    psk = generate_psk()
    with Topology("wtdemo") as topo:
        left, right = topo.netns(), topo.netns()
        _step(f"namespaces {left.name} and {right.name}, joined by a veth pair")
        topo.veth(left, right, f"{LEFT_UNDER}/24", f"{RIGHT_UNDER}/24")
        with WiretunPeer(left) as wt, WireguardGoPeer(right).start() as wg:
            _step(f"wireguard-go as {wg.name} in {right.name}, configured with `wg set`")
            wg.configure(listen_port=51821)
            wg.add_peer(
                wt.keys.public,
                allowed_ips=[f"{LEFT_OVER}/32", f"{LEFT_OVER6}/128"],
                preshared_key=psk,
            )
            wg.link_up([f"{RIGHT_OVER}/24", f"{RIGHT_OVER6}/64"])
            _step(f"`wiretun up {wt.name}.conf` in {left.name}")
            wt.write_config(
                addresses=[f"{LEFT_OVER}/24", f"{LEFT_OVER6}/64"],
                listen_port=51820,
                peers=[
                    PeerSpec(
                        wg.keys.public,
                        [f"{RIGHT_OVER}/32", f"{RIGHT_OVER6}/128"],
                        endpoint=f"{RIGHT_UNDER}:51821",
                        preshared_key=psk,
                    )
                ],
            )
            with open(wt.config_path) as f:
                print(f.read().replace(wt.keys.private, "(hidden)").replace(psk, "(hidden)"))
            wt.start()
            _step("UDP echo through the tunnel (IPv4, then IPv6 the other way)")
            v4 = udp_ping(left, right, RIGHT_OVER)
            v6 = udp_ping(right, left, LEFT_OVER6)
            print(f"{LEFT_OVER} -> {RIGHT_OVER}: {v4}/3 answered")
            print(f"{RIGHT_OVER6} -> {LEFT_OVER6}: {v6}/3 answered")
            _step(f"`wg show {wt.name}` (wg speaking UAPI to wiretun)")
            print(wt.wg("show", wt.name))
            _step(f"iperf3, one TCP stream, {args.time} s each way")
            print(f"wiretun -> wireguard-go: {_iperf(left, right, RIGHT_OVER, args.time, False)}")
            print(f"wireguard-go -> wiretun: {_iperf(left, right, RIGHT_OVER, args.time, True)}")
            _step("SIGTERM: wiretun removes its device, routes, rule and socket")
            assert wt.proc is not None
            wt.proc.send_signal(signal.SIGTERM)
            code = wt.proc.wait(15)
            print(f"exit code {code}; links and rules left in {left.name}:")
            print(left.run("ip", "-br", "link") + left.run("ip", "rule"))
            clean = wt.name not in left.run("ip", "link") and not os.path.exists(wt.socket_path)
    ok = v4 == 3 and v6 == 3 and code == 0 and clean
    print("demo " + ("succeeded" if ok else "FAILED"))
    return 0 if ok else 1
