"""`wiretun up CONFIG` / `wiretun down NAME`: run a WireGuard interface from a wg-quick file.

`up` does what `wg-quick up` does (routes, rules and nftables rules as wg-quick installs
them, hooks, DNS, the default MTU, SaveConfig on the way down), with wiretun as the WireGuard
device. It runs in the foreground until SIGINT/SIGTERM, until its UAPI socket is removed or
until its TUN device disappears (SIGHUP too, unless ignored at start), then removes
everything it made (device, routes, rules,
nftables tables, DNS, socket, pid file); what a crash left behind is removed by the next
`up` of the same interface.
`--background` re-executes itself detached and returns once the interface is up.
`wiretun down` (wiretun.tunnel.down) stops it through the pid file written here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import AsyncIPRoute

from wiretun import datapath
from wiretun.ifname import is_wg_quick_ifname
from wiretun.netdev.errors import NetdevError
from wiretun.netdev.manager import TunDeviceManager
from wiretun.netdev.policy import MAIN_TABLE, PolicyRouting
from wiretun.tun import Tun, TunBroken, TunClosed
from wiretun.tun.inline import InlineTun
from wiretun.tunnel.backend import DeviceBackend
from wiretun.tunnel.config import ConfigError, TunnelConfig, load_config
from wiretun.tunnel.detach import module_command, start_detached
from wiretun.tunnel.dns import DnsError, set_dns, unset_dns
from wiretun.tunnel.firewall import Firewall, FirewallError, delete_tables
from wiretun.tunnel.hardening import harden_process
from wiretun.tunnel.hooks import HookError, run_hooks
from wiretun.tunnel.leftovers import Leftovers, read_leftovers, remove_rules
from wiretun.tunnel.loop import FramePath, TunnelLoop
from wiretun.tunnel.mtu import default_mtu
from wiretun.tunnel.pidfile import remove_pid_file, write_pid_file
from wiretun.tunnel.routing import (
    FwmarkFollower,
    RoutePlan,
    configured_fwmark,
    plan_routes,
    routing_table,
)
from wiretun.tunnel.runfiles import ensure_dir
from wiretun.tunnel.saveconfig import render_config, write_config
from wiretun.tunnel.uapi import UapiInUseError, UapiServer
from wiretun.tunnel.uapi_protocol import (
    PeerUpdate,
    SetFwmark,
    SetListenPort,
    SetOperation,
    SetPrivateKey,
    UapiError,
    set_operations_from_config,
)
from wiretun.tunnel.udp import UdpBind
from wiretun.wireguard.device import Device

log = logging.getLogger(__name__)

RUN_DIR = "/var/run/wireguard"
CONFIG_DIR = "/etc/wireguard"
TXQUEUELEN = 10_000
EXIT_CONFIG = 2


def pid_path(name: str) -> str:
    return os.path.join(RUN_DIR, f"{name}.pid")


def leftovers_path(name: str) -> str:
    return os.path.join(RUN_DIR, f"{name}.installed")


def config_path(arg: str) -> str:
    """wg-quick's lookup: a bare interface name means /etc/wireguard/NAME.conf. (A name
    ending in .conf is taken as a file, so `wiretun up wg0.conf` keeps meaning ./wg0.conf.)"""
    if "/" not in arg and not arg.endswith(".conf") and is_wg_quick_ifname(arg):
        return os.path.join(CONFIG_DIR, f"{arg}.conf")
    return arg


@dataclass(frozen=True)
class UpOptions:
    config: str
    name: str
    queues: int
    offload: bool
    ready_fd: int | None
    tun_threads: bool = False
    keep_output: bool = False  # after 'ready', keep stdout/stderr (see --keep-output)


# -- CLI -------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config",
        help=f"wg-quick configuration file, or an interface name NAME for {CONFIG_DIR}/NAME.conf",
    )
    parser.add_argument(
        "-i", "--interface", help="interface name (default: the config file's name, no .conf)"
    )
    parser.add_argument("--queues", type=int, default=1, help="TUN queues (default 1)")
    parser.add_argument(
        "--offload",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TUN TSO/USO offloads (IFF_VNET_HDR) (default: on)",
    )
    parser.add_argument(
        "--tun-threads",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="serve the TUN queues from reader/writer threads instead of the event loop "
        "(default: off)",
    )
    parser.add_argument(
        "--background",
        action="store_true",
        help="detach and return once the interface is up",
    )
    # Internal: the write end of the readiness pipe of a --background parent.
    parser.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    # Internal, with --ready-fd: keep writing the log to stdout/stderr after 'ready' instead of
    # letting go of them, for a supervisor that keeps it (the lab's launcher).
    parser.add_argument("--keep-output", action="store_true", help=argparse.SUPPRESS)


def interface_name(config_path: str, override: str | None) -> str:
    return override if override is not None else Path(config_path).name.removesuffix(".conf")


def run(args: argparse.Namespace) -> int:
    args.config = config_path(args.config)
    name = interface_name(args.config, args.interface)
    if not is_wg_quick_ifname(name):
        print(f"wiretun up: invalid interface name {name!r}", file=sys.stderr)
        return EXIT_CONFIG
    if not 1 <= args.queues <= 64:
        print(f"wiretun up: --queues must be 1..64, not {args.queues}", file=sys.stderr)
        return EXIT_CONFIG
    harden_process()  # before the private key is read
    try:
        config = load_config(args.config, name=name)
    except ConfigError as e:
        print(f"wiretun up: {e}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in config.warnings:
        print(f"wiretun up: warning: {warning}", file=sys.stderr)
    if args.background:
        return _start_background(args, name)
    opts = UpOptions(
        args.config, name, args.queues, args.offload, args.ready_fd, args.tun_threads,
        args.keep_output,
    )  # fmt: skip
    return asyncio.run(run_device(config, opts))


# -- background mode -------------------------------------------------------------------------


def _start_background(args: argparse.Namespace, name: str) -> int:
    """Re-execute in the foreground, detached, and wait for its 'ready' on a pipe (safely:
    wiretun.tunnel.detach.module_command; the child runs in `/`, so the config path is made
    absolute here, SaveConfig writes back to the same file)."""
    argv = ["-v"] * int(getattr(args, "verbose", 0) or 0)
    argv += ["up", os.path.abspath(args.config), "--interface", name]
    argv += ["--queues", str(args.queues), "--offload" if args.offload else "--no-offload"]
    argv += ["--tun-threads" if args.tun_threads else "--no-tun-threads"]
    up, child, code = start_detached(module_command("wiretun", argv))
    if up:
        print(f"wiretun: {name} is up (pid {child.pid})")
    return code


def _signal_ready(fd: int | None, keep_output: bool = False) -> None:
    if fd is None:
        return
    os.write(fd, b"ready\n")
    os.close(fd)
    if keep_output:
        return
    # Detached from the caller's terminal/pipes: a parent reading our stderr must see EOF.
    devnull = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(devnull, target)
    os.close(devnull)


# -- the tunnel ------------------------------------------------------------------------------


class _Sockets:
    """The current UDP sockets (a UAPI listen_port change replaces them)."""

    def __init__(self, udp: UdpBind) -> None:
        self.udp = udp

    def close(self) -> None:
        self.udp.close()


class _Stop:
    """Why the tunnel is going down (first reason wins), and the loop to stop."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.event = asyncio.Event()

    def __call__(self, reason: str, level: int = logging.INFO) -> None:
        if self.reason is None:
            self.reason = reason
            log.log(level, "stopping: %s", reason)
        self.event.set()


def _stop_signals() -> list[signal.Signals]:
    """SIGINT, SIGTERM and SIGHUP stop the tunnel, with its teardown. SIGHUP is what ends
    wireguard-go too (a Go program exits on it: device gone, socket left behind); like it, a
    SIGHUP ignored when we were started (`nohup`) stays ignored."""
    sigs = [signal.SIGINT, signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        sigs.append(signal.SIGHUP)
    return sigs


def _write_pid_file(name: str) -> str:
    ensure_dir(RUN_DIR)  # UapiServer.start checked it already; this is its own guard
    path = pid_path(name)
    write_pid_file(path)  # pid and start time: `down` checks both before signalling
    return path


def _remove_pid_file(path: str) -> None:
    remove_pid_file(path)  # only if it still names us: a newer instance may own it now


async def _close_manager(manager: TunDeviceManager) -> None:
    """Remove routes and rules; failures (the device already gone) are logged, not raised,
    so the rest of the teardown still runs."""
    try:
        await manager.close()
    except (NetdevError, OSError) as e:
        log.warning("teardown of %s: %s", manager.name, e)


async def _configure_device(manager: TunDeviceManager, config: TunnelConfig) -> None:
    """Addresses, MTU, link up; raises NetdevError (or ValueError for what the kernel's
    rules forbid, e.g. IPv6 with an MTU below 1280)."""
    await manager.start()
    if config.interface.addresses:
        await manager.set_addresses(config.interface.addresses)
    else:
        await manager.set_mtu(manager.mtu)
        await manager.set_up()
    try:
        await manager.set_txqueuelen(TXQUEUELEN)
    except NetdevError as e:
        log.info("%s: keeping the default txqueuelen: %s", manager.name, e)


async def _install_routes(
    policy: PolicyRouting, firewall: Firewall, plan: RoutePlan, fwmark: int
) -> int:
    """wg-quick's add_route for each AllowedIP (add_default's nftables rules included);
    returns the mark the sockets must carry (the fwmark table's number when a default
    route needed one and FwMark was not set)."""
    # wg-quick checks each route against main just before adding it; in the plan's
    # longest-first order no route of ours covers a later one, so checking them all first
    # and adding them in bulk gives the same routes.
    routes = [
        (net, MAIN_TABLE if given is None else given)
        for net, given in plan.routes
        if given is not None or not await policy.covered_in_main(net)
    ]
    await policy.add_routes(routes)
    if plan.defaults:
        table = fwmark or await policy.free_table()
        fwmark = fwmark or table
        addresses = await _current_addresses(policy.name)
        for net in plan.defaults:
            await policy.add_default(net, table, fwmark)
            await firewall.add_default(net.version, fwmark, addresses)
    return fwmark


async def _remove_leftovers(name: str) -> None:
    """Rules and DNS a crashed run of `name` (in this namespace) recorded and never removed.
    Called once our UAPI socket is bound: no live instance of `name` owns them."""
    path = leftovers_path(name)
    found = read_leftovers(path)
    if found is None:
        return
    log.warning(
        "%s: removing what a previous run left behind (%d rule(s), %d nftables table(s))",
        name, len(found.rules), len(found.nft),
    )  # fmt: skip
    await remove_rules(found.rules)
    await delete_tables(found.nft)
    if found.dns is not None:
        try:
            await unset_dns(found.dns)
        except DnsError as e:
            log.warning("%s: leftover DNS: %s", name, e)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def _unset_dns(handle: str, record: Leftovers) -> None:
    try:
        await unset_dns(handle)
    except (DnsError, OSError) as e:
        log.warning("teardown DNS: %s", e)
    record.set_dns(None)


async def _current_addresses(name: str) -> list[str]:
    """The device's addresses as `ip -brief address` lists them, for SaveConfig."""
    ipr = AsyncIPRoute(groups=0)
    try:
        index = await ipr.link_lookup(ifname=name)
        if not index:
            return []
        return [
            f"{m.get('address')}/{m['prefixlen']}" async for m in await ipr.get_addr(index=index[0])
        ]
    finally:
        ipr.close()


async def _save_config(config: TunnelConfig, backend: DeviceBackend, path: str, mtu: int) -> None:
    addresses = await _current_addresses(config.interface.name)
    text = render_config(config.interface, backend.get_snapshot(), addresses=addresses, mtu=mtu)
    print(f"[#] saving the configuration to {path}", file=sys.stderr, flush=True)
    write_config(path, text)


def _endpoint_hosts(ops: list[SetOperation]) -> list[str]:
    return [op.endpoint[0] for op in ops if isinstance(op, PeerUpdate) and op.endpoint]


async def run_device(config: TunnelConfig, opts: UpOptions) -> int:
    """Bring the interface up as wg-quick would, serve it until told to stop, tear down."""
    harden_process()  # wiretun-go comes here directly; keys arrive over UAPI
    loop = asyncio.get_running_loop()
    stop = _Stop()
    for sig in _stop_signals():
        loop.add_signal_handler(sig, stop, sig.name)
    iface = config.interface
    name = opts.name
    try:
        plan = plan_routes(config, routing_table(config))
    except ConfigError as e:
        print(f"wiretun up: {e}", file=sys.stderr)
        return EXIT_CONFIG
    fwmark = configured_fwmark(config) or 0
    try:
        ops = set_operations_from_config(config)
    except OSError as e:
        print(f"wiretun up: {name}: cannot resolve an endpoint: {e}", file=sys.stderr)
        return 1
    # Key, port and mark are already in place (wiretun-go starts without a key).
    ops = [op for op in ops if not isinstance(op, SetPrivateKey | SetListenPort | SetFwmark)]
    mtu = iface.mtu or await default_mtu(_endpoint_hosts(ops))
    went_up = False

    async with contextlib.AsyncExitStack() as stack:
        try:
            udp = UdpBind.open(iface.listen_port or 0, fwmark=fwmark)
        except OSError as e:
            print(f"wiretun up: cannot bind UDP port {iface.listen_port}: {e}", file=sys.stderr)
            return 1
        socks = _Sockets(udp)
        stack.callback(socks.close)
        # The native batch data path unless WIRETUN_PURE=1 or it is not built; the pure
        # twin is slower than the per-packet path, so without native we run that one.
        data_path = datapath.load()
        batched = data_path is datapath.NATIVE
        device = Device(
            iface.private_key,
            listen_port=udp.port,
            fwmark=fwmark or None,
            wall_clock_offset=time.time() - loop.time(),
            mtu=mtu,
            datapath=data_path if batched else None,
        )
        tunnel: TunnelLoop | None = None

        def rebind(port: int) -> int:
            new = UdpBind.open(port, fwmark=socks.udp.fwmark)
            if tunnel is not None:
                tunnel.replace_udp(new)  # closes the old sockets once nothing waits on them
            else:
                socks.udp.close()
            socks.udp = new
            return new.port

        def remark_sockets(mark: int) -> None:
            socks.udp.set_fwmark(mark)

        set_mark = FwmarkFollower(remark_sockets)

        def changed() -> None:
            if tunnel is not None:
                tunnel.kick()

        backend = DeviceBackend(
            device, now=loop.time, rebind=rebind, set_fwmark=set_mark, changed=changed
        )
        try:
            backend.apply(ops)
        except UapiError as e:
            print(f"wiretun up: {name}: {e}", file=sys.stderr)
            return EXIT_CONFIG

        uapi = UapiServer(name, backend, on_removed=lambda: stop("UAPI socket removed"))
        try:
            await uapi.start()
        except UapiInUseError as e:
            print(f"wiretun up: {name} is already running: {e}", file=sys.stderr)
            return 1
        except OSError as e:  # e.g. an untrusted socket directory
            print(f"wiretun up: {name}: cannot create the UAPI socket: {e}", file=sys.stderr)
            return 1
        stack.push_async_callback(uapi.close)
        await _remove_leftovers(name)
        record = Leftovers(leftovers_path(name))
        stack.callback(record.remove)

        try:
            await run_hooks("PreUp", iface.pre_up, name)
        except HookError as e:
            print(f"wiretun up: {name}: {e}", file=sys.stderr)
            return 1

        try:
            # Packets to the TUN passed the peer's AEAD: merging them need not re-verify L4
            # checksums (the kernel's WireGuard marks them CHECKSUM_UNNECESSARY likewise).
            tun: Tun | InlineTun
            if not opts.tun_threads:
                # Under the GIL the threads run no work in parallel, and their hand-offs cost:
                # the event loop reads and writes the TUN queue fds itself.
                tun = InlineTun.open(
                    name,
                    queues=opts.queues,
                    mtu=mtu,
                    offload=opts.offload,
                    verify_checksums=False,
                    frames=batched and opts.offload,
                )
            else:
                tun = Tun.open(
                    name,
                    queues=opts.queues,
                    mtu=mtu,
                    offload=opts.offload,
                    verify_checksums=False,
                    frames=batched and opts.offload,
                )
        except OSError as e:
            print(f"wiretun up: cannot create TUN {name}: {e}", file=sys.stderr)
            return 1
        stack.callback(tun.close)

        try:
            manager = TunDeviceManager(name, mtu=mtu, fwmark=None, table="off")
        except ValueError as e:
            print(f"wiretun up: {name}: {e}", file=sys.stderr)
            return EXIT_CONFIG
        stack.push_async_callback(_close_manager, manager)
        try:
            await _configure_device(manager, config)
        except (NetdevError, ValueError) as e:
            print(f"wiretun up: cannot configure {name}: {e}", file=sys.stderr)
            return 1

        if iface.dns:
            try:
                handle = await set_dns(name, iface.dns, iface.dns_search)
            except (DnsError, OSError) as e:
                print(f"wiretun up: {name}: {e}", file=sys.stderr)
                return 1
            record.set_dns(handle)
            stack.push_async_callback(_unset_dns, handle, record)

        policy = PolicyRouting(name, on_rules=record.set_rules)
        firewall = Firewall(name, on_tables=record.set_nft)
        try:
            await policy.start()
            stack.push_async_callback(policy.close)
            stack.push_async_callback(set_mark.settle)
            stack.push_async_callback(firewall.close)
            mark = await _install_routes(policy, firewall, plan, fwmark)
        except (NetdevError, ValueError, FirewallError, OSError) as e:
            print(f"wiretun up: cannot install the routes of {name}: {e}", file=sys.stderr)
            return 1
        if mark != socks.udp.fwmark:  # the mark of a table picked just now
            socks.udp.set_fwmark(mark)
            device.fwmark = mark
        set_mark.rules = policy

        try:
            await run_hooks("PostUp", iface.post_up, name)
        except HookError as e:
            print(f"wiretun up: {name}: {e}", file=sys.stderr)
            return 1

        frames = None
        if batched:
            vnet = opts.offload
            frames = FramePath(vnet, data_path.coalescer(vnet=vnet, udp=tun.uso))
        tunnel = TunnelLoop(tun, device, socks.udp, frames=frames)
        stack.callback(lambda: _remove_pid_file(pid_path(name)))
        _write_pid_file(name)
        log.info(
            "%s up: port %d, %d peer(s), mtu %d, queues %d, offload %s, data path %s",
            name,
            socks.udp.port,
            len(device.peers),
            mtu,
            opts.queues,
            opts.offload,
            "native" if batched else "pure",
        )
        _signal_ready(opts.ready_fd, opts.keep_output)

        run_task = asyncio.create_task(tunnel.run(), name=f"tunnel-{name}")
        stop_task = asyncio.create_task(stop.event.wait())
        await asyncio.wait([run_task, stop_task], return_when=asyncio.FIRST_COMPLETED)
        tunnel.stop()
        stop_task.cancel()
        failed = False
        try:
            await run_task
        except (TunBroken, TunClosed) as e:
            # Not asked for: say why at the default verbosity, not only with -v.
            stop(f"TUN device gone ({e})", logging.WARNING)
        except Exception:
            log.exception("%s: the data path failed", name)
            failed = True
        finally:
            log.info("%s down: %s", name, stop.reason)
            log.info("loop %s", tunnel.stats())
            log.info("udp %s", socks.udp.stats())
            core = device.stats()
            log.info("core drops %s, TUN frame drops %s", core.drops, core.frame_drops)
            log.info("tun %s", tun.stats().total)
        try:
            await run_hooks("PreDown", iface.pre_down, name)
        except HookError as e:
            log.warning("%s: %s", name, e)  # going down all the same
        if iface.save_config:
            try:
                await _save_config(config, backend, opts.config, mtu)
            except OSError as e:
                log.warning("%s: cannot save the configuration: %s", name, e)
        went_up = not failed
    if went_up:
        try:
            await run_hooks("PostDown", iface.post_down, name)
        except HookError as e:
            log.warning("%s: %s", name, e)
            return 1
        return 0
    return 1
