"""`Tunnel`: one WireGuard interface run from a Python program, as one asyncio object.

It owns the protocol core (`Device`), the TUN, the UDP sockets, the UAPI server (so `wg` and
`wiretun show` see it) and the device manager (addresses, MTU, routes and rules as wg-quick
installs them)::

    async with Tunnel.from_config("/etc/wireguard/wg0.conf") as tunnel:
        print(tunnel.stats().peers)
        await tunnel.wait_closed()  # until close(), the UAPI socket is removed or the TUN goes

`wiretun up` is this plus what only a command does (argument parsing, wg-quick's hooks, DNS,
SaveConfig, crash records, the pid file, signals and exit codes): it adds those through
`TunnelHooks`, whose methods run at fixed points of `start()` and of the teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Self

from wiretun import datapath
from wiretun.tun import InlineTun, Tun, TunBroken, TunClosed, TunDevice
from wiretun.tunnel.backend import DeviceBackend
from wiretun.tunnel.config import (
    ConfigError,
    IPNetwork,
    TunnelConfig,
    load_config,
    parse_config,
    parse_key,
    resolve_endpoint,
)
from wiretun.tunnel.loop import BatchCorePort, FramePath, TunnelLoop
from wiretun.tunnel.routing import FwmarkFollower, RoutePlan, configured_fwmark, plan_routes
from wiretun.tunnel.routing import routing_table as table_setting
from wiretun.tunnel.stats import (
    OffloadCounters,
    PeerCounters,
    TunnelStats,
    core_drops,
    iter_peer_counters,
    json_line_pieces,
    peer_counters,
)
from wiretun.tunnel.uapi import SOCKET_DIR, UapiInUseError, UapiServer
from wiretun.tunnel.uapi_protocol import (
    DeviceSnapshot,
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
from wiretun.wireguard.keys import key_to_base64

if TYPE_CHECKING:
    from wiretun.netdev.manager import TunDeviceManager
    from wiretun.netdev.policy import PolicyRouting, RuleSpec
    from wiretun.tunnel.firewall import Firewall

log = logging.getLogger(__name__)

TXQUEUELEN = 10_000


class TunnelError(Exception):
    """The tunnel could not start; the message says what and why, in one line. `config`:
    the configuration itself is at fault (wiretun up exits 2 for those, 1 otherwise)."""

    def __init__(self, message: str, *, config: bool = False) -> None:
        super().__init__(message)
        self.config = config


class TunnelRunningError(TunnelError):
    """Another live process serves this interface name (its UAPI socket answers)."""


@dataclass(frozen=True, slots=True)
class TunnelOptions:
    """How to run the interface (the config file says what it is).

    `uapi`: serve /var/run/wireguard/NAME.sock, for `wg` and `wiretun show`. `routing`: add
    the routes, rules and nftables rules wg-quick adds for the peers' AllowedIPs (Table=);
    without it only the device itself is set up (addresses, MTU, link up). `tun_threads`:
    serve the TUN from threads (`Tun`) instead of the event loop (`InlineTun`)."""

    queues: int = 1
    offload: bool = True
    tun_threads: bool = False
    uapi: bool = True
    routing: bool = True
    socket_dir: str = SOCKET_DIR

    def __post_init__(self) -> None:
        if not 1 <= self.queues <= 64:
            raise ValueError(f"queues must be 1..64, not {self.queues}")


class TunnelHooks:
    """Points where a caller adds to a Tunnel's start and teardown; each does nothing here.
    A hook that fails raises TunnelError (start() then undoes what was made and raises it).

    In start(): `claimed` (the name is ours: the UAPI socket is bound), `before_device`
    (wg-quick's PreUp), `device_configured` (addresses are set: DNS), `started` (traffic
    flows: PostUp). In the teardown: `stopping` (still up: PreDown, SaveConfig), then
    everything is undone, then `stopped` (PostDown; only after a clean run). `step` is told
    each thing set up, in words (wiretun up prints them as wg-quick does).
    `rules_changed`/`tables_changed`: the policy rules and nftables tables about to exist,
    before each change (a crash record)."""

    def step(self, text: str) -> None:
        log.info("%s", text)

    async def claimed(self, tunnel: Tunnel) -> None:
        return None

    async def before_device(self, tunnel: Tunnel) -> None:
        return None

    async def device_configured(self, tunnel: Tunnel) -> None:
        return None

    async def started(self, tunnel: Tunnel) -> None:
        return None

    async def stopping(self, tunnel: Tunnel) -> None:
        return None

    async def stopped(self, tunnel: Tunnel) -> None:
        return None

    def rules_changed(self, rules: list[RuleSpec]) -> None:
        return None

    def tables_changed(self, tables: list[str]) -> None:
        return None


ConfigSource = str | os.PathLike[str] | TunnelConfig
Key = str | bytes
EndpointArg = str | tuple[str, int]


class Tunnel:
    """One WireGuard interface inside your asyncio program, as `wiretun up` runs it.

        async with Tunnel.from_config("/etc/wireguard/wg0.conf") as tunnel:
            print(tunnel.stats().peers)
            await tunnel.wait_closed()  # until stop(), or the TUN or UAPI socket goes

    `start()` (or `async with`) brings it up as wg-quick does and returns once packets
    flow; `close()` takes all of it down (idempotent). It owns the protocol core
    (`device`), the TUN (`tun`), the UDP sockets, the UAPI socket (`uapi_path`: `wg` and
    `wiretun show` see it) and the addresses, routes, rules and firewall rules. How it
    runs is a `TunnelOptions` (from_config takes its fields as keywords: `uapi=False`,
    `routing=False`, `queues=`, `offload=`, `tun_threads=`); `hooks` add to its start
    and teardown (`TunnelHooks`).

    While running: `stats()`, `snapshot()`, and the peer operations of `wg set`
    (`add_peer`, `remove_peer`, `set_endpoint`, `set_allowed_ips`,
    `set_persistent_keepalive`, `set_preshared_key`), `rebind(port)`, `set_fwmark(mark)`.
    Plain attributes: `name`, `config` (the parsed TunnelConfig), `options`, `hooks`, `mtu`
    and `data_path` ("native" or "pure", set by start()), `stop_reason` (why it went down)
    and `failure` (the exception that ended the data path, if one did).

    Not thread-safe: call it from the event loop it was started in.
    """

    def __init__(
        self,
        config: TunnelConfig,
        *,
        options: TunnelOptions | None = None,
        hooks: TunnelHooks | None = None,
    ) -> None:
        """From a parsed TunnelConfig; `from_config` also takes a path or the file's text."""
        self.config = config
        self.options = options or TunnelOptions()
        self.hooks = hooks or TunnelHooks()
        self.name = config.interface.name
        self._state = "new"  # new -> starting -> running -> closing -> closed
        self._stack = contextlib.AsyncExitStack()
        self._device: Device | None = None
        self._backend: DeviceBackend | None = None
        self._udp: UdpBind | None = None
        self._uapi: UapiServer | None = None
        self._tun: TunDevice | None = None
        self._manager: TunDeviceManager | None = None
        self._policy: PolicyRouting | None = None
        self._loop_runner: TunnelLoop | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._set_mark = FwmarkFollower(self._remark_sockets)
        self._stop_event = asyncio.Event()
        self._closed_event = asyncio.Event()
        self.mtu = 0
        self.data_path = "pure"
        self.stop_reason: str | None = None
        self.failure: BaseException | None = None  # what ended the data path, if anything
        self._up_at = 0.0

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        source: ConfigSource,
        *,
        name: str | None = None,
        hooks: TunnelHooks | None = None,
        **options: object,
    ) -> Tunnel:
        """A tunnel (not started) from a wg-quick file's path, its text (anything with a
        newline in it) or a parsed TunnelConfig. `name` is the interface (default: the file's
        name without .conf; required for text). Keyword options are TunnelOptions' fields.
        Raises ConfigError (a ValueError) for a bad configuration."""
        opts = TunnelOptions(**options)  # type: ignore[arg-type]
        config: TunnelConfig
        if isinstance(source, TunnelConfig):
            config = source
            if name is not None and name != config.interface.name:
                config = dataclasses.replace(
                    config, interface=dataclasses.replace(config.interface, name=name)
                )
        elif isinstance(source, str) and "\n" in source:
            if name is None:
                raise ValueError("a configuration given as text needs name=")
            config = parse_config(source, f"<{name} config>", name=name)
        else:
            config = load_config(source, name=name)
        for warning in config.warnings:
            log.warning("%s", warning)
        return cls(config, options=opts, hooks=hooks)

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Bring the interface up as wg-quick would; returns once packets flow. Raises
        TunnelError (TunnelRunningError if the name is served already), having undone it all."""
        if self._state != "new":
            raise RuntimeError(f"Tunnel {self.name}: start() called twice")
        self._state = "starting"
        try:
            await self._start()
        except BaseException:
            self._state = "closing"
            await self._stack.aclose()
            self._state = "closed"
            self._closed_event.set()
            raise
        self._state = "running"
        self._up_at = time.time()
        self._closer = asyncio.get_running_loop().create_task(
            self._supervise(), name=f"tunnel-{self.name}-supervisor"
        )

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg, opts, hooks, name = self.config, self.options, self.hooks, self.name
        iface = cfg.interface
        try:
            plan = plan_routes(cfg, table_setting(cfg)) if opts.routing else RoutePlan((), ())
        except ConfigError as e:
            raise TunnelError(str(e), config=True) from e
        fwmark = configured_fwmark(cfg) or 0
        try:
            ops = set_operations_from_config(cfg)
        except OSError as e:
            raise TunnelError(f"{name}: cannot resolve an endpoint: {e}") from e
        # Key, port and mark are the Device's and the sockets' from the start.
        ops = [op for op in ops if not isinstance(op, SetPrivateKey | SetListenPort | SetFwmark)]
        self.mtu = iface.mtu or await _default_mtu(_endpoint_hosts(ops))
        # The native batch data path unless WIRETUN_PURE=1 or it is not built; the pure
        # twin is slower than the per-packet path, so without native we run that one.
        backend_impl = datapath.load()
        batched = backend_impl is datapath.NATIVE
        self.data_path = "native" if batched else "pure"
        device = self._device = Device(
            iface.private_key,
            listen_port=iface.listen_port or None,
            fwmark=fwmark or None,
            wall_clock_offset=time.time() - loop.time(),
            mtu=self.mtu,
            datapath=backend_impl if batched else None,
        )
        backend = self._backend = DeviceBackend(
            device,
            now=loop.time,
            rebind=self._rebind,
            set_fwmark=self._set_mark,
            changed=self._changed,
        )
        try:
            backend.apply(ops)
        except UapiError as e:
            raise TunnelError(f"{name}: {e}", config=True) from e

        # The UAPI socket first: a second `up` of this name stops here, before it binds a
        # UDP port that the running one holds.
        if opts.uapi:
            uapi = UapiServer(
                name,
                backend,
                socket_dir=opts.socket_dir,
                on_removed=lambda: self.stop("UAPI socket removed"),
                stats=self.stats_pieces,
            )
            try:
                await uapi.start()
            except UapiInUseError as e:
                raise TunnelRunningError(f"{name} is already running: {e}") from e
            except PermissionError as e:
                raise TunnelError(
                    f"cannot create the UAPI socket {uapi.path}: {e.strerror} "
                    f"(needs root, or write access to {opts.socket_dir})"
                ) from e
            except OSError as e:  # e.g. an untrusted socket directory
                raise TunnelError(f"{name}: cannot create the UAPI socket: {e}") from e
            self._uapi = uapi
            self._stack.push_async_callback(uapi.close)
            hooks.step(f"uapi {uapi.path}")
        await hooks.claimed(self)

        try:
            udp = UdpBind.open(iface.listen_port or 0, fwmark=fwmark)
        except OSError as e:
            raise TunnelError(f"cannot bind UDP port {iface.listen_port}: {e}") from e
        self._udp = udp
        self._stack.callback(self._close_udp)
        device.listen_port = udp.port
        hooks.step(f"listen port {udp.port}")

        await hooks.before_device(self)
        tun = self._tun = self._open_tun(batched)
        self._stack.callback(tun.close)
        hooks.step(
            f"tun {name} (queues {opts.queues}, offload {'on' if opts.offload else 'off'}, "
            f"data path {self.data_path})"
        )
        await self._configure_link()
        await hooks.device_configured(self)
        if opts.routing:
            mark = await self._install_routes(plan, fwmark)
            if mark != udp.fwmark:  # the mark of a table picked just now
                udp.set_fwmark(mark)
                device.fwmark = mark
        for peer in device.peers:
            hooks.step(_describe_peer(peer.public_key, peer.endpoint, peer.allowed_ips))

        frames = None
        if batched:
            vnet = opts.offload
            frames = FramePath(vnet, backend_impl.coalescer(vnet=vnet, udp=tun.uso))
        core: BatchCorePort = device  # the seam, checked against the real class
        runner = self._loop_runner = TunnelLoop(tun, core, udp, frames=frames)
        self._run_task = loop.create_task(runner.run(), name=f"tunnel-{name}")
        self._stack.push_async_callback(self._stop_loop)
        await hooks.started(self)
        log.info(
            "%s up: port %d, %d peer(s), mtu %d, queues %d, offload %s, data path %s",
            name, udp.port, len(device.peers), self.mtu, opts.queues, opts.offload,
            self.data_path,
        )  # fmt: skip

    def _open_tun(self, batched: bool) -> TunDevice:
        opts = self.options
        # Packets to the TUN passed the peer's AEAD: merging them need not re-verify L4
        # checksums (the kernel's WireGuard marks them CHECKSUM_UNNECESSARY likewise).
        kind: type[Tun] | type[InlineTun] = Tun if opts.tun_threads else InlineTun
        try:
            # Under the GIL threads run no work in parallel, and their hand-offs cost: by
            # default the event loop reads and writes the TUN queue fds itself.
            return kind.open(
                self.name,
                queues=opts.queues,
                mtu=self.mtu,
                offload=opts.offload,
                verify_checksums=False,
                frames=batched and opts.offload,
            )
        except OSError as e:
            raise TunnelError(f"cannot create TUN {self.name}: {e}") from e

    async def _configure_link(self) -> None:
        from wiretun.netdev.errors import NetdevError  # noqa: PLC0415 (pyroute2: lazily)
        from wiretun.netdev.manager import TunDeviceManager  # noqa: PLC0415

        try:
            manager = TunDeviceManager(self.name, mtu=self.mtu, fwmark=None, table="off")
        except ValueError as e:
            raise TunnelError(f"{self.name}: {e}", config=True) from e
        self._manager = manager
        self._stack.push_async_callback(close_manager, manager)
        try:
            await configure_device(manager, self.config)
        except (NetdevError, ValueError) as e:
            raise TunnelError(f"cannot configure {self.name}: {e}") from e
        for address in self.config.interface.addresses:
            self.hooks.step(f"address add {address} dev {self.name}")
        self.hooks.step(f"mtu {self.mtu} up dev {self.name}")

    async def _install_routes(self, plan: RoutePlan, fwmark: int) -> int:
        from wiretun.netdev.errors import NetdevError  # noqa: PLC0415
        from wiretun.netdev.policy import PolicyRouting  # noqa: PLC0415
        from wiretun.tunnel.firewall import Firewall, FirewallError  # noqa: PLC0415

        policy = PolicyRouting(self.name, on_rules=self.hooks.rules_changed)
        firewall = Firewall(self.name, on_tables=self.hooks.tables_changed)
        try:
            await policy.start()
            self._policy = policy
            self._stack.push_async_callback(policy.close)
            self._stack.push_async_callback(self._set_mark.settle)
            self._stack.push_async_callback(firewall.close)
            mark = await install_routes(policy, firewall, plan, fwmark, self.hooks.step)
        except (NetdevError, ValueError, FirewallError, OSError) as e:
            raise TunnelError(f"cannot install the routes of {self.name}: {e}") from e
        self._set_mark.rules = policy
        return mark

    def stop(self, reason: str = "stopped", level: int = logging.INFO) -> None:
        """Ask the tunnel to go down (signal-safe: returns at once); the first reason given
        is the one kept (`stop_reason`), logged at `level`. `wait_closed()` returns once the
        teardown is done."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log.log(level, "stopping: %s", reason)
        self._stop_event.set()

    async def close(self) -> None:
        """Stop and take everything down (idempotent; also after a failed start)."""
        if self._state == "new":
            self._state = "closed"
            self._closed_event.set()
            return
        self.stop("closed")
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Return once the tunnel is down (closed, UAPI socket removed, TUN gone, or its
        data path failed: then `failure` says with what)."""
        await self._closed_event.wait()

    @property
    def running(self) -> bool:
        """Between a start() that returned and the beginning of the teardown."""
        return self._state == "running"

    async def _supervise(self) -> None:
        run_task = self._run_task
        assert run_task is not None
        stop_wait = asyncio.ensure_future(self._stop_event.wait())
        try:
            await asyncio.wait([run_task, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
        self._state = "closing"
        if self._loop_runner is not None:
            self._loop_runner.stop()
        try:
            await run_task
        except (TunBroken, TunClosed) as e:
            # Not asked for: say why at the default verbosity, not only with -v.
            self.stop(f"TUN device gone ({e})", logging.WARNING)
        except Exception as e:
            log.exception("%s: the data path failed", self.name)
            self.failure = e
            self.stop(f"data path failed ({type(e).__name__}: {e})", logging.ERROR)
        self._log_final_stats()
        try:
            with contextlib.suppress(TunnelError):
                await self.hooks.stopping(self)
        finally:
            await self._stack.aclose()
        try:
            if self.failure is None:
                await self.hooks.stopped(self)
        finally:
            self._state = "closed"
            self._closed_event.set()

    async def _stop_loop(self) -> None:
        if self._loop_runner is not None:
            self._loop_runner.stop()
        if self._run_task is not None and not self._run_task.done():
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._run_task

    def _log_final_stats(self) -> None:
        log.info("%s down: %s", self.name, self.stop_reason)
        if self._loop_runner is not None:
            log.info("loop %s", self._loop_runner.stats())
        if self._udp is not None:
            log.info("udp %s", self._udp.stats())
        if self._device is not None:
            core = self._device.stats()
            log.info("core drops %s, TUN frame drops %s", core.drops, core.frame_drops)
        if self._tun is not None:
            log.info("tun %s", self._tun.stats().total)

    def on_teardown(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `callback` at teardown, before what was set up before this call is undone
        (for a hook's own undo: wg-quick's DNS, say)."""
        self._stack.push_async_callback(callback)

    # -- what a running tunnel is -----------------------------------------------------------

    @property
    def device(self) -> Device:
        """The protocol core, `wiretun.wireguard.Device` (read it; change it through the
        Tunnel's peer operations, which keep the UAPI view and the data path in step)."""
        if self._device is None:
            raise RuntimeError(f"Tunnel {self.name} is not started")
        return self._device

    @property
    def tun(self) -> TunDevice:
        """The TUN device (`Tun` or `InlineTun`, a wiretun.tun.TunDevice)."""
        if self._tun is None:
            raise RuntimeError(f"Tunnel {self.name} has no TUN (not started)")
        return self._tun

    @property
    def public_key(self) -> str:
        """The interface's public key, in base64 as `wg` prints it."""
        return key_to_base64(self.config.interface.public_key)

    @property
    def listen_port(self) -> int:
        """The UDP port bound (the config's ListenPort, or the one picked); 0 before start."""
        return self._udp.port if self._udp is not None else 0

    @property
    def uapi_path(self) -> str | None:
        """The UAPI socket (/var/run/wireguard/NAME.sock); None with `uapi=False`."""
        return self._uapi.path if self._uapi is not None else None

    def snapshot(self) -> DeviceSnapshot:
        """What `wg show` would see (UAPI's get=1)."""
        return self._live_backend().get_snapshot()

    def stats(self) -> TunnelStats:
        """One frozen snapshot of every counter (see TunnelStats)."""
        now = time.time()
        return self._stats(now, peer_counters(self.device, now))

    async def stats_in_slices(self, slice_seconds: float = 0.005) -> TunnelStats:
        """stats(), its per-peer counters gathered `slice_seconds` at a time with a loop turn
        between (the data path runs meanwhile; a metrics scrape of 10k peers built them in
        one go). The peers' counters are then of slightly different moments. RuntimeError
        if the tunnel stops meanwhile."""
        now = time.time()
        peers: list[PeerCounters] = []
        until = time.monotonic() + slice_seconds
        for counters in iter_peer_counters(self.device, now):
            peers.append(counters)
            if time.monotonic() >= until:
                await asyncio.sleep(0)
                until = time.monotonic() + slice_seconds
        if not self.running:
            raise RuntimeError(f"{self.name} stopped while its counters were read")
        return self._stats(now, tuple(peers))

    def stats_pieces(self) -> Iterator[str]:
        """stats_json() as pieces of one line of JSON, each peer's counters built when its
        piece is asked for: the UAPI server sends them in slices, so `wiretun show` of 10k
        peers does not hold the loop (building them at once took ~200 ms)."""
        now = time.time()
        return json_line_pieces(self._stats(now, ()), iter_peer_counters(self.device, now))

    def _stats(self, now: float, peers: tuple[PeerCounters, ...]) -> TunnelStats:
        device, udp, tun = self.device, self._udp, self.tun
        assert udp is not None and self._loop_runner is not None
        core = device.stats(peers=False)  # the peers' counters come from `peers`
        return TunnelStats(
            name=self.name,
            # The device's: `wg set NAME private-key` may have changed the configured one.
            public_key=key_to_base64(device.public_key),
            listen_port=udp.port,
            fwmark=device.fwmark or 0,
            mtu=self.mtu,
            data_path=self.data_path,
            taken_at=now,
            uptime=max(0.0, now - self._up_at) if self._up_at else 0.0,
            peers=peers,
            core_drops=core_drops(core.drops),
            packets_sealed=core.packets_sealed,
            packets_opened=core.packets_opened,
            handshakes_completed=core.handshakes_completed,
            frame_drops=dict(core.frame_drops),
            loop=self._loop_runner.stats(),
            udp=udp.stats(),
            tun=tun.stats(),
            offload=OffloadCounters.total(tun.codec_stats()),
            uapi=self._uapi.statistics() if self._uapi is not None else None,
        )

    def stats_json(self) -> dict[str, object]:
        """`stats().to_json()`: plain JSON types, what `wiretun show --json` prints."""
        return self.stats().to_json()

    # -- changing a running tunnel (UAPI `set` semantics; routes are not touched, as with
    # -- `wg set`) ----------------------------------------------------------------------------

    def add_peer(
        self,
        public_key: Key,
        *,
        allowed_ips: Iterable[str | IPNetwork] = (),
        endpoint: EndpointArg | None = None,
        persistent_keepalive: int | None = None,
        preshared_key: Key | None = None,
    ) -> None:
        """Add a peer (ValueError if it exists). Keys are base64 (as `wg` prints them) or
        32 bytes; the endpoint is "host:port", "[v6]:port" or (host, port)."""
        key = _key(public_key, "public key")
        if any(p.public_key == key for p in self.device.peers):
            raise ValueError(f"peer {key_to_base64(key)} exists already")
        self._apply(
            PeerUpdate(
                key,
                preshared_key=None if preshared_key is None else _key(preshared_key, "psk"),
                endpoint=None if endpoint is None else _endpoint(endpoint),
                persistent_keepalive=persistent_keepalive,
                replace_allowed_ips=True,
                add_allowed_ips=_networks(allowed_ips),
            )
        )

    def remove_peer(self, public_key: Key) -> None:
        """Remove a peer (KeyError if there is none with this key)."""
        key = self._existing(public_key)
        self._apply(PeerUpdate(key, remove=True))

    def set_endpoint(self, public_key: Key, endpoint: EndpointArg) -> None:
        """Where to send to the peer: "host:port", "[v6]:port" or (host, port) (KeyError
        if there is no such peer). A peer that roams moves it again, as in WireGuard."""
        key = self._existing(public_key)
        self._apply(PeerUpdate(key, update_only=True, endpoint=_endpoint(endpoint)))

    def set_allowed_ips(self, public_key: Key, allowed_ips: Iterable[str | IPNetwork]) -> None:
        """Replace the peer's allowed IPs (a network another peer had moves to this one)."""
        key = self._existing(public_key)
        nets = _networks(allowed_ips)
        self._apply(
            PeerUpdate(key, update_only=True, replace_allowed_ips=True, add_allowed_ips=nets)
        )

    def set_persistent_keepalive(self, public_key: Key, seconds: int) -> None:
        """Seconds between keepalives when idle; 0 turns them off."""
        if not 0 <= seconds <= 65535:
            raise ValueError(f"persistent keepalive must be 0..65535 s, not {seconds}")
        key = self._existing(public_key)
        self._apply(PeerUpdate(key, update_only=True, persistent_keepalive=seconds))

    def set_preshared_key(self, public_key: Key, preshared_key: Key | None) -> None:
        """Set (or, with None, remove) the peer's preshared key."""
        key = self._existing(public_key)
        psk = bytes(32) if preshared_key is None else _key(preshared_key, "preshared key")
        self._apply(PeerUpdate(key, update_only=True, preshared_key=psk))

    def rebind(self, port: int) -> int:
        """Move the UDP sockets to `port` (0: any free one); returns the port now bound.
        Raises OSError (EADDRINUSE...) and keeps the old sockets then."""
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, not {port}")
        self._apply(SetListenPort(port))
        return self.listen_port

    def set_fwmark(self, mark: int) -> None:
        """Mark the tunnel's UDP packets (0: none); the `not fwmark` rules of a default
        route follow. Raises OSError if the mark cannot be set."""
        if not 0 <= mark <= 0xFFFFFFFF:
            raise ValueError(f"fwmark must be a 32-bit number, not {mark}")
        self._apply(SetFwmark(mark))

    def _existing(self, public_key: Key) -> bytes:
        key = _key(public_key, "public key")
        if not any(p.public_key == key for p in self.device.peers):
            raise KeyError(f"no peer {key_to_base64(key)}")
        return key

    def _apply(self, op: SetOperation) -> None:
        try:
            self._live_backend().apply([op])
        except UapiError as e:
            if isinstance(op, SetListenPort | SetFwmark) and e.__cause__ is not None:
                raise e.__cause__ from None  # the OSError itself, not its errno
            raise ValueError(str(e)) from e

    def _live_backend(self) -> DeviceBackend:
        if self._backend is None or self._state in ("new", "closed"):
            raise RuntimeError(f"Tunnel {self.name} is not running")
        return self._backend

    # -- the backend's callbacks ------------------------------------------------------------

    def _rebind(self, port: int) -> int:
        old = self._udp
        new = UdpBind.open(port, fwmark=old.fwmark if old is not None else 0)
        if self._loop_runner is not None:
            self._loop_runner.replace_udp(new)  # closes the old ones once nothing waits
        elif old is not None:
            old.close()
        self._udp = new
        return new.port

    def _close_udp(self) -> None:
        if self._udp is not None:
            self._udp.close()

    def _remark_sockets(self, mark: int) -> None:
        if self._udp is not None:
            self._udp.set_fwmark(mark)

    def _changed(self) -> None:
        if self._loop_runner is not None:
            self._loop_runner.kick()

    def __repr__(self) -> str:
        return f"<Tunnel {self.name} {self._state} public key {self.public_key}>"


# -- helpers (module level: wiretun up's tests drive them one by one) --------------------------


async def close_manager(manager: TunDeviceManager) -> None:
    """Remove routes and rules; failures (the device already gone) are logged, not raised,
    so the rest of the teardown still runs."""
    from wiretun.netdev.errors import NetdevError  # noqa: PLC0415

    try:
        await manager.close()
    except (NetdevError, OSError) as e:
        log.warning("teardown of %s: %s", manager.name, e)


async def configure_device(manager: TunDeviceManager, config: TunnelConfig) -> None:
    """Addresses, MTU, link up; raises NetdevError (or ValueError for what the kernel's
    rules forbid, e.g. IPv6 with an MTU below 1280)."""
    from wiretun.netdev.errors import NetdevError  # noqa: PLC0415

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


async def install_routes(
    policy: PolicyRouting,
    firewall: Firewall,
    plan: RoutePlan,
    fwmark: int,
    step: Callable[[str], None] = lambda _: None,
) -> int:
    """wg-quick's add_route for each AllowedIP (add_default's nftables rules included);
    returns the mark the sockets must carry (the fwmark table's number when a default
    route needed one and FwMark was not set)."""
    from wiretun.netdev.policy import MAIN_TABLE  # noqa: PLC0415

    # wg-quick checks each route against main just before adding it; in the plan's
    # longest-first order no route of ours covers a later one, so checking them all first
    # and adding them in bulk (one netlink send per 128) gives the same routes.
    routes = []
    for net, given in plan.routes:
        if given is None and await policy.covered_in_main(net):
            continue
        routes.append((net, MAIN_TABLE if given is None else given))
        step(f"route add {net} dev {policy.name}" + ("" if given is None else f" table {given}"))
    await policy.add_routes(routes)
    if plan.defaults:
        table = fwmark or await policy.free_table()
        fwmark = fwmark or table
        addresses = await current_addresses(policy.name)
        for net in plan.defaults:
            await policy.add_default(net, table, fwmark)
            await firewall.add_default(net.version, fwmark, addresses)
            step(
                f"route add {net} dev {policy.name} table {table}, rules: not fwmark "
                f"0x{fwmark:x} -> table {table}, main suppress_prefixlength 0; nftables"
            )
    return fwmark


async def current_addresses(name: str) -> list[str]:
    """The device's addresses as `ip -brief address` lists them (for SaveConfig too)."""
    from pyroute2 import AsyncIPRoute  # noqa: PLC0415

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


async def _default_mtu(hosts: list[str]) -> int:
    from wiretun.tunnel.mtu import default_mtu  # noqa: PLC0415 (pyroute2: lazily)

    return await default_mtu(hosts)


def _endpoint_hosts(ops: list[SetOperation]) -> list[str]:
    return [op.endpoint[0] for op in ops if isinstance(op, PeerUpdate) and op.endpoint]


def _describe_peer(key: bytes, endpoint: tuple[str, int] | None, nets: Iterable[object]) -> str:
    where = "" if endpoint is None else f" endpoint {_format_endpoint(endpoint)}"
    ips = ",".join(str(n) for n in nets) or "(none)"
    return f"peer {key_to_base64(key)}{where} allowed ips {ips}"


def _format_endpoint(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _key(value: Key, what: str) -> bytes:
    if isinstance(value, bytes):
        if len(value) != 32:
            raise ValueError(f"a {what} is 32 bytes, not {len(value)}")
        return value
    try:
        return parse_key(value.strip())
    except Exception as e:  # config's _FieldError: say it as a ValueError
        raise ValueError(f"{what}: not a valid key (base64 of 32 bytes)") from e


def _endpoint(value: EndpointArg) -> tuple[str, int]:
    if isinstance(value, tuple):
        host, port = value
    else:
        text = value.strip()
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port_text = rest.removeprefix(":")
        else:
            host, _, port_text = text.rpartition(":")
        if not host or not port_text.isdigit():
            raise ValueError(f"endpoint {value!r} is not host:port or [IPv6]:port")
        port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"endpoint port must be 1..65535, not {port}")
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        try:
            return resolve_endpoint(host, port)
        except OSError as e:
            raise ValueError(f"endpoint {host!r}: cannot resolve: {e}") from e


def _networks(values: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    out = []
    for v in values:
        try:
            out.append(v if not isinstance(v, str) else ipaddress.ip_network(v, strict=False))
        except ValueError as e:
            raise ValueError(f"allowed ip {v!r}: {e}") from e
    return tuple(dict.fromkeys(out))
