"""`wiretun up CONFIG`: run a WireGuard interface from a wg-quick file, as a command.

The interface itself is a `wiretun.tunnel.Tunnel`; this module is what a command adds around
it: arguments, the privilege check, wg-quick's hooks, DNS and SaveConfig (`WgQuickHooks`),
the record of rules and nftables tables a crash would leave (removed by the next `up` of the
same interface), the pid file `wiretun down` reads, signals, `--background`, exit codes.
It runs in the foreground until SIGINT/SIGTERM (SIGHUP too, unless ignored at start), until
its UAPI socket is removed or until its TUN device disappears, printing what it sets up as
wg-quick does ("[#] ..." on stderr).

Imports stay light at module level: `wiretun up --help` needs none of the tunnel.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wiretun.ifname import is_wg_quick_ifname, wg_quick_ifname_problem
from wiretun.tunnel.config import ConfigError, load_config

if TYPE_CHECKING:
    from wiretun.tunnel.config import TunnelConfig
    from wiretun.tunnel.leftovers import Leftovers
    from wiretun.tunnel.tunnel import Tunnel, TunnelHooks

log = logging.getLogger(__name__)

RUN_DIR = "/var/run/wireguard"
CONFIG_DIR = "/etc/wireguard"
EXIT_CONFIG = 2
CAP_NET_ADMIN = 12


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
    metrics: tuple[str, int] | None = None  # HOST, PORT of the Prometheus endpoint
    print_steps: bool = True  # "[#] ..." lines as wg-quick prints (not for wiretun-go)
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
        "--metrics",
        metavar="HOST:PORT",
        type=metrics_address,
        help="serve Prometheus metrics (per-peer bytes, handshake age, drops by reason) "
        "over HTTP at http://HOST:PORT/metrics",
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
    # Internal: a --background parent has printed the config's warnings already.
    parser.add_argument("--warned", action="store_true", help=argparse.SUPPRESS)


def metrics_address(text: str) -> tuple[str, int]:
    """HOST:PORT or [V6]:PORT (argparse type: ArgumentTypeError for anything else)."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (say 127.0.0.1:9586)")
    return host, int(port)


def interface_name(config_path: str, override: str | None) -> str:
    return override if override is not None else Path(config_path).name.removesuffix(".conf")


def missing_privilege() -> str | None:
    """What `up` lacks to create a TUN and set routes, in words; None if it has it."""
    try:
        with open("/proc/self/status") as f:
            caps = next((ln.split()[1] for ln in f if ln.startswith("CapEff:")), None)
    except OSError:
        caps = None
    if caps is not None and int(caps, 16) >> CAP_NET_ADMIN & 1:
        return None
    if caps is None and os.geteuid() == 0:
        return None
    return "needs CAP_NET_ADMIN to create the TUN device and set its routes (run it as root)"


def run(args: argparse.Namespace) -> int:
    args.config = config_path(args.config)
    name = interface_name(args.config, args.interface)
    problem = wg_quick_ifname_problem(name)
    if problem is not None:
        print(f"wiretun up: invalid interface name {name!r}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if not 1 <= args.queues <= 64:
        print(f"wiretun up: --queues must be 1..64, not {args.queues}", file=sys.stderr)
        return EXIT_CONFIG
    from wiretun.tunnel.hardening import harden_process  # noqa: PLC0415

    harden_process()  # before the private key is read
    try:
        config = load_config(args.config, name=name)
    except ConfigError as e:
        print(f"wiretun up: {e}", file=sys.stderr)
        return EXIT_CONFIG
    lacking = missing_privilege()
    if lacking is not None:
        print(f"wiretun up: {lacking}", file=sys.stderr)
        return 1
    if not args.warned:  # a --background child: its parent has said them already
        for warning in config.warnings:
            print(f"wiretun up: warning: {warning}", file=sys.stderr)
    if args.background:
        return _start_background(args, name)
    opts = UpOptions(
        args.config,
        name,
        args.queues,
        args.offload,
        args.ready_fd,
        args.tun_threads,
        metrics=args.metrics,
        keep_output=args.keep_output,
    )
    import asyncio  # noqa: PLC0415

    return asyncio.run(run_device(config, opts))


# -- background mode -------------------------------------------------------------------------


def _start_background(args: argparse.Namespace, name: str) -> int:
    """Re-execute in the foreground, detached, and wait for its 'ready' on a pipe (safely:
    wiretun.tunnel.detach.module_command; the child runs in `/`, so the config path is made
    absolute here, SaveConfig writes back to the same file). The child is told the config's
    warnings were printed here (--warned), so they are said once."""
    from wiretun.tunnel.detach import module_command, start_detached  # noqa: PLC0415

    argv = ["-v"] * int(getattr(args, "verbose", 0) or 0)
    argv += ["up", os.path.abspath(args.config), "--interface", name, "--warned"]
    argv += ["--queues", str(args.queues), "--offload" if args.offload else "--no-offload"]
    argv += ["--tun-threads" if args.tun_threads else "--no-tun-threads"]
    if args.metrics is not None:
        host, port = args.metrics
        argv += ["--metrics", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
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


# -- the tunnel, with wg-quick's additions ---------------------------------------------------


def _stop_signals() -> list[int]:
    """SIGINT, SIGTERM and SIGHUP stop the tunnel, with its teardown. SIGHUP is what ends
    wireguard-go too (a Go program exits on it: device gone, socket left behind); like it, a
    SIGHUP ignored when we were started (`nohup`) stays ignored."""
    import signal  # noqa: PLC0415

    sigs: list[int] = [signal.SIGINT, signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        sigs.append(signal.SIGHUP)
    return sigs


def _write_pid_file(name: str) -> None:
    from wiretun.tunnel.pidfile import write_pid_file  # noqa: PLC0415
    from wiretun.tunnel.runfiles import ensure_dir  # noqa: PLC0415

    ensure_dir(RUN_DIR)  # UapiServer.start checked it already; this is its own guard
    write_pid_file(pid_path(name))  # pid and start time: `down` checks both before signalling


async def _remove_pid_file(name: str) -> None:
    from wiretun.tunnel.pidfile import remove_pid_file  # noqa: PLC0415

    remove_pid_file(pid_path(name))  # only if it still names us: a newer one may own it now


async def remove_leftovers(name: str) -> None:
    """Rules, nftables tables and DNS a crashed run of `name` (in this namespace) recorded
    and never removed. Called once our UAPI socket is bound: no live instance owns them."""
    import contextlib  # noqa: PLC0415

    from wiretun.tunnel.dns import DnsError, unset_dns  # noqa: PLC0415
    from wiretun.tunnel.firewall import delete_tables  # noqa: PLC0415
    from wiretun.tunnel.leftovers import read_leftovers, remove_rules  # noqa: PLC0415

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


def wg_quick_hooks(config: TunnelConfig, opts: UpOptions) -> TunnelHooks:
    """The TunnelHooks of `wiretun up` (a function: the class needs the tunnel imported)."""
    from wiretun.netdev.policy import RuleSpec  # noqa: PLC0415
    from wiretun.tunnel.dns import DnsError, set_dns, unset_dns  # noqa: PLC0415
    from wiretun.tunnel.hooks import HookError, run_hooks  # noqa: PLC0415
    from wiretun.tunnel.leftovers import Leftovers  # noqa: PLC0415
    from wiretun.tunnel.saveconfig import render_config, write_config  # noqa: PLC0415
    from wiretun.tunnel.tunnel import (  # noqa: PLC0415
        TunnelError,
        TunnelHooks,
        current_addresses,
    )

    iface = config.interface
    name = opts.name

    class WgQuickHooks(TunnelHooks):
        """PreUp/PostUp/PreDown/PostDown, DNS, SaveConfig and the crash record."""

        def __init__(self) -> None:
            self.record: Leftovers | None = None
            self.post_down_failed = False

        def step(self, text: str) -> None:
            if opts.print_steps:
                print(f"[#] {text}", file=sys.stderr, flush=True)
            else:
                log.info("%s", text)

        async def claimed(self, tunnel: Tunnel) -> None:
            await remove_leftovers(name)
            record = self.record = Leftovers(leftovers_path(name))

            async def remove() -> None:
                record.remove()

            tunnel.on_teardown(remove)

        async def before_device(self, tunnel: Tunnel) -> None:
            try:
                await run_hooks("PreUp", iface.pre_up, name)
            except HookError as e:
                raise TunnelError(f"{name}: {e}") from e

        async def device_configured(self, tunnel: Tunnel) -> None:
            if not iface.dns:
                return
            try:
                handle = await set_dns(name, iface.dns, iface.dns_search)
            except (DnsError, OSError) as e:
                raise TunnelError(f"{name}: {e}") from e
            record = self.record
            if record is not None:
                record.set_dns(handle)

            async def undo() -> None:
                try:
                    await unset_dns(handle)
                except (DnsError, OSError) as e:
                    log.warning("teardown DNS: %s", e)
                if record is not None:
                    record.set_dns(None)

            tunnel.on_teardown(undo)

        def rules_changed(self, rules: list[RuleSpec]) -> None:
            if self.record is not None:
                self.record.set_rules(rules)

        def tables_changed(self, tables: list[str]) -> None:
            if self.record is not None:
                self.record.set_nft(tables)

        async def started(self, tunnel: Tunnel) -> None:
            try:
                await run_hooks("PostUp", iface.post_up, name)
            except HookError as e:
                raise TunnelError(f"{name}: {e}") from e

        async def stopping(self, tunnel: Tunnel) -> None:
            try:
                await run_hooks("PreDown", iface.pre_down, name)
            except HookError as e:
                log.warning("%s: %s", name, e)  # going down all the same
            if iface.save_config:
                try:
                    addresses = await current_addresses(name)
                    text = render_config(
                        iface, tunnel.snapshot(), addresses=addresses, mtu=tunnel.mtu
                    )
                    print(
                        f"[#] saving the configuration to {opts.config}",
                        file=sys.stderr,
                        flush=True,
                    )
                    write_config(opts.config, text)
                except OSError as e:
                    log.warning("%s: cannot save the configuration: %s", name, e)

        async def stopped(self, tunnel: Tunnel) -> None:
            try:
                await run_hooks("PostDown", iface.post_down, name)
            except HookError as e:
                log.warning("%s: %s", name, e)
                self.post_down_failed = True

    return WgQuickHooks()


def freeze_setup_objects() -> None:
    """Take what setup made (modules, the configuration, its peers), which lives until exit,
    out of the cyclic collector's reach: a full collection then scans only what came later.
    Scanning it all held the loop 13-32 ms a pass with 3000 peers, 100-140 ms with 10k
    (~1M objects). Setup's garbage is collected first (once, before ready): frozen, it
    would stay for good, and with it whatever it refers to (a traceback's frames, say)."""
    gc.collect()
    gc.freeze()


async def run_device(config: TunnelConfig, opts: UpOptions) -> int:
    """Bring the interface up as wg-quick would, serve it until told to stop, tear down;
    the exit code (0, 1, or EXIT_CONFIG for a configuration the kernel or core refused)."""
    import asyncio  # noqa: PLC0415
    import signal  # noqa: PLC0415

    from wiretun.tunnel.hardening import harden_process  # noqa: PLC0415
    from wiretun.tunnel.tunnel import Tunnel, TunnelError, TunnelOptions  # noqa: PLC0415

    harden_process()  # wiretun-go comes here directly; keys arrive over UAPI
    hooks = wg_quick_hooks(config, opts)
    tunnel = Tunnel(
        config,
        options=TunnelOptions(
            queues=opts.queues, offload=opts.offload, tun_threads=opts.tun_threads
        ),
        hooks=hooks,
    )
    loop = asyncio.get_running_loop()
    for sig in _stop_signals():
        loop.add_signal_handler(sig, tunnel.stop, signal.Signals(sig).name)
    try:
        await tunnel.start()
    except TunnelError as e:
        print(f"wiretun up: {e}", file=sys.stderr)
        return EXIT_CONFIG if e.config else 1
    if opts.metrics is not None:
        from wiretun.tunnel.metrics import MetricsServer  # noqa: PLC0415

        server = MetricsServer(tunnel, *opts.metrics)
        try:
            await server.start()
        except OSError as e:
            print(f"wiretun up: cannot serve metrics on {opts.metrics}: {e}", file=sys.stderr)
            await tunnel.close()
            return 1
        tunnel.on_teardown(server.close)
        hooks.step(f"metrics http://{server.address}/metrics")
    _write_pid_file(opts.name)
    tunnel.on_teardown(lambda: _remove_pid_file(opts.name))
    freeze_setup_objects()
    _signal_ready(opts.ready_fd, opts.keep_output)
    await tunnel.wait_closed()
    post_down_failed = bool(getattr(hooks, "post_down_failed", False))
    return 1 if tunnel.failure is not None or post_down_failed else 0
