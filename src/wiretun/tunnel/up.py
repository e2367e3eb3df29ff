"""`wiretun up CONFIG` / `wiretun down NAME`: run a WireGuard interface from a wg-quick file.

`up` runs in the foreground until SIGINT/SIGTERM, until its UAPI socket is removed or until
its TUN device disappears, then removes everything it made (device, routes, rules, socket,
pid file). `--background` re-executes itself detached and returns once the interface is up.
`wiretun down` (wiretun.tunnel.down) stops it through the pid file written here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from wiretun import datapath
from wiretun.netdev.errors import NetdevError
from wiretun.netdev.manager import TunDeviceManager
from wiretun.tun import Tun, TunBroken, TunClosed
from wiretun.tun.inline import InlineTun
from wiretun.tunnel.backend import DeviceBackend
from wiretun.tunnel.config import ConfigError, TunnelConfig, is_valid_ifname, load_config
from wiretun.tunnel.loop import FramePath, TunnelLoop
from wiretun.tunnel.pidfile import remove_pid_file, write_pid_file
from wiretun.tunnel.routing import FwmarkFollower, configured_fwmark, routing_table
from wiretun.tunnel.uapi import UapiInUseError, UapiServer
from wiretun.tunnel.uapi_protocol import (
    SetFwmark,
    SetListenPort,
    UapiError,
    set_operations_from_config,
)
from wiretun.tunnel.udp import UdpBind
from wiretun.wireguard.device import Device

log = logging.getLogger(__name__)

RUN_DIR = "/var/run/wireguard"
DEFAULT_MTU = 1420
TXQUEUELEN = 10_000
EXIT_CONFIG = 2


def pid_path(name: str) -> str:
    return os.path.join(RUN_DIR, f"{name}.pid")


@dataclass(frozen=True)
class UpOptions:
    config: str
    name: str
    queues: int
    offload: bool
    ready_fd: int | None
    tun_threads: bool = False


# -- CLI -------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="wg-quick style configuration file")
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


def interface_name(config_path: str, override: str | None) -> str:
    return override if override is not None else Path(config_path).name.removesuffix(".conf")


def run(args: argparse.Namespace) -> int:
    name = interface_name(args.config, args.interface)
    if not is_valid_ifname(name):
        print(f"wiretun up: invalid interface name {name!r}", file=sys.stderr)
        return EXIT_CONFIG
    if not 1 <= args.queues <= 64:
        print(f"wiretun up: --queues must be 1..64, not {args.queues}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        config = load_config(args.config, name=name)
    except ConfigError as e:
        print(f"wiretun up: {e}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in config.warnings:
        print(f"wiretun up: warning: {warning}", file=sys.stderr)
    if args.background:
        return _start_background(args, name)
    opts = UpOptions(args.config, name, args.queues, args.offload, args.ready_fd, args.tun_threads)
    return asyncio.run(_main(config, opts))


# -- background mode -------------------------------------------------------------------------


def _start_background(args: argparse.Namespace, name: str) -> int:
    """Re-execute in the foreground, detached, and wait for its 'ready' on a pipe."""
    r, w = os.pipe()
    cmd = [sys.executable, "-m", "wiretun"]
    cmd += ["-v"] * int(getattr(args, "verbose", 0) or 0)
    cmd += ["up", args.config, "--interface", name, "--queues", str(args.queues)]
    cmd += ["--offload" if args.offload else "--no-offload", "--ready-fd", str(w)]
    cmd += ["--tun-threads" if args.tun_threads else "--no-tun-threads"]
    try:
        child = subprocess.Popen(
            cmd, pass_fds=(w,), stdin=subprocess.DEVNULL, start_new_session=True
        )
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as pipe:
        status = pipe.read()
    if status.startswith(b"ready"):
        print(f"wiretun: {name} is up (pid {child.pid})")
        return 0
    # The child failed before it was up and has said why on our stderr.
    code = child.wait()
    return code or 1


def _signal_ready(fd: int | None) -> None:
    if fd is None:
        return
    os.write(fd, b"ready\n")
    os.close(fd)
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


def _allowed_routes(
    config: TunnelConfig,
) -> tuple[list[ipaddress.IPv4Network], list[ipaddress.IPv6Network]]:
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    for peer in config.peers:
        for net in peer.allowed_ips:
            if isinstance(net, ipaddress.IPv4Network):
                v4.append(net)
            else:
                v6.append(net)
    return v4, v6


def _write_pid_file(name: str) -> str:
    os.makedirs(RUN_DIR, mode=0o755, exist_ok=True)
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
    """Addresses, link up, routes; raises NetdevError (or ValueError for what the kernel's
    rules forbid, e.g. IPv6 with an MTU below 1280)."""
    await manager.start()
    if config.interface.addresses:
        await manager.set_addresses(config.interface.addresses)
    else:
        await manager.set_up()
    try:
        await manager.set_txqueuelen(TXQUEUELEN)
    except NetdevError as e:
        log.info("%s: keeping the default txqueuelen: %s", manager.name, e)
    if manager.table is not None:
        v4, v6 = _allowed_routes(config)
        await manager.set_routes(v4, v6)


async def _main(config: TunnelConfig, opts: UpOptions) -> int:
    loop = asyncio.get_running_loop()
    stop = _Stop()
    for sig, label in ((signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")):
        loop.add_signal_handler(sig, stop, label)
    iface = config.interface
    name = opts.name
    mtu = iface.mtu or DEFAULT_MTU
    # Table=auto without FwMark: the manager picks a free table and uses it as the mark.
    fwmark = configured_fwmark(config) or 0
    try:
        table = routing_table(config)
    except ConfigError as e:
        print(f"wiretun up: {e}", file=sys.stderr)
        return EXIT_CONFIG

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
            ops = set_operations_from_config(config)
        except OSError as e:
            print(f"wiretun up: {name}: cannot resolve an endpoint: {e}", file=sys.stderr)
            return 1
        # Port and mark are already in place (the mark defaults to ours, not 0).
        ops = [op for op in ops if not isinstance(op, SetListenPort | SetFwmark)]
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
        stack.push_async_callback(uapi.close)

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
            manager = TunDeviceManager(name, mtu=mtu, fwmark=fwmark or None, table=table)
        except ValueError as e:
            print(f"wiretun up: {name}: {e}", file=sys.stderr)
            return EXIT_CONFIG
        stack.push_async_callback(_close_manager, manager)
        stack.push_async_callback(set_mark.settle)
        try:
            await _configure_device(manager, config)
        except (NetdevError, ValueError) as e:
            print(f"wiretun up: cannot configure {name}: {e}", file=sys.stderr)
            return 1
        set_mark.manager = manager
        if manager.fwmark != socks.udp.fwmark:  # the mark of a table picked just now
            socks.udp.set_fwmark(manager.fwmark)
            device.fwmark = manager.fwmark

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
        _signal_ready(opts.ready_fd)

        run_task = asyncio.create_task(tunnel.run(), name=f"tunnel-{name}")
        stop_task = asyncio.create_task(stop.event.wait())
        await asyncio.wait([run_task, stop_task], return_when=asyncio.FIRST_COMPLETED)
        tunnel.stop()
        stop_task.cancel()
        try:
            await run_task
        except (TunBroken, TunClosed) as e:
            # Not asked for: say why at the default verbosity, not only with -v.
            stop(f"TUN device gone ({e})", logging.WARNING)
        except Exception:
            log.exception("%s: the data path failed", name)
            return 1
        finally:
            log.info("%s down: %s", name, stop.reason)
            log.info("loop %s", tunnel.stats())
            log.info("udp %s", socks.udp.stats())
            log.info("core drops %s", device.stats().drops)
            log.info("tun %s", tun.stats().total)
    return 0
