"""The UAPI unix socket (/var/run/wireguard/NAME.sock) that lets `wg` drive a wiretun device."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from wiretun.ifname import is_wg_quick_ifname
from wiretun.tunnel.uapi_protocol import (
    ERRNO_UNKNOWN,
    DeviceSnapshot,
    GetRequest,
    SetOperation,
    SetRequest,
    StatsRequest,
    UapiError,
    UapiProtocolError,
    UapiRequestReader,
    format_get,
    format_set_reply,
    format_stats,
    parse_set,
)

logger = logging.getLogger(__name__)

SOCKET_DIR = "/var/run/wireguard"
_READ_SIZE = 64 * 1024


class UapiBackend(Protocol):
    """What the server needs from a device. Both are called on the event loop thread, one
    request at a time. `apply` raises UapiError (e.g. EADDRINUSE for a busy port)."""

    def get_snapshot(self) -> DeviceSnapshot: ...
    def apply(self, ops: list[SetOperation]) -> None: ...


class UapiInUseError(OSError):
    """Another live process serves this interface name."""


@dataclass(frozen=True, slots=True)
class UapiStats:
    connections: int = 0
    gets: int = 0
    sets: int = 0
    failed: int = 0  # requests answered with a non-zero errno
    dropped: int = 0  # connections closed for sending something that is not an operation


def socket_path(name: str, socket_dir: str = SOCKET_DIR) -> str:
    return os.path.join(socket_dir, f"{name}.sock")


def _probe_live(path: str) -> bool:
    """True if a process accepts connections on `path` (wg and wireguard-go use the same
    test to tell a live socket from a stale one)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except TimeoutError:
        return True  # alive but its backlog is full
    finally:
        probe.close()
    return True


def _bind(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # umask is process-wide, but it is the only way to create the file 0600 from the
        # start; wireguard-go does the same.
        old_umask = os.umask(0o077)
        try:
            try:
                sock.bind(path)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                mode = os.lstat(path).st_mode
                if not stat.S_ISSOCK(mode):
                    raise UapiInUseError(
                        errno.EEXIST, f"{path} exists and is not a socket"
                    ) from exc
                if _probe_live(path):
                    raise UapiInUseError(
                        errno.EADDRINUSE, f"{path} is in use: the interface is already up"
                    ) from exc
                logger.info("removing stale UAPI socket %s", path)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                sock.bind(path)
        finally:
            os.umask(old_umask)
        # umask 077 leaves 0700 (as wireguard-go's socket); nobody needs execute on it.
        os.chmod(path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class UapiServer:
    """Serves `get=1` / `set=1` for interface `name` until closed.

    `removed` is set (and `on_removed` called) when the socket file is deleted or replaced
    by someone else: the tunnel must then shut down, as wireguard-go does.
    """

    def __init__(
        self,
        name: str,
        backend: UapiBackend,
        *,
        socket_dir: str = SOCKET_DIR,
        poll_interval: float = 1.0,
        on_removed: Callable[[], None] | None = None,
        stats: Callable[[], object] | None = None,
    ) -> None:
        if not is_wg_quick_ifname(name):
            raise ValueError(f"{name!r} is not a valid interface name")
        self.name = name
        self.path = socket_path(name, socket_dir)
        self.removed = asyncio.Event()
        self._backend = backend
        self._socket_dir = socket_dir
        self._poll_interval = poll_interval
        self._on_removed = on_removed
        self._stats_source = stats  # JSON-able counters for `wiretun-stats=1`, if any
        self._listener: socket.socket | None = None
        self._identity: tuple[int, int] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Each connection's socket is kept here so close() can close it even if its task
        # was cancelled before it ever ran.
        self._connections: dict[asyncio.Task[None], socket.socket] = {}
        self._stats = UapiStats()  # immutable: replaced, so a reader's copy never changes
        self._closed = False

    async def start(self) -> None:
        """Create the socket (removing a stale one) and start serving.
        Raises UapiInUseError if another process serves this name."""
        if self._listener is not None or self._closed:
            raise RuntimeError("UapiServer.start() called twice or after close()")
        os.makedirs(self._socket_dir, mode=0o755, exist_ok=True)
        self._listener = _bind(self.path)
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        self._tasks = [
            asyncio.create_task(self._accept(self._listener), name=f"uapi-accept-{self.name}"),
            asyncio.create_task(self._watch(), name=f"uapi-watch-{self.name}"),
        ]
        logger.info("UAPI listening on %s", self.path)

    async def close(self) -> None:
        """Stop serving, end open connections and remove the socket file (if still ours)."""
        if self._closed:
            return
        self._closed = True
        self._unlink_if_ours()
        connections = dict(self._connections)
        tasks = [*self._tasks, *connections]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in connections.values():
            conn.close()
        if self._listener is not None:
            self._listener.close()

    async def __aenter__(self) -> UapiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def statistics(self) -> UapiStats:
        return self._stats

    def _still_ours(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def _unlink_if_ours(self) -> None:
        # Never delete a socket that another process has since put in our place.
        if self._identity is not None and self._still_ours():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _watch(self) -> None:
        while self._still_ours():
            await asyncio.sleep(self._poll_interval)
        logger.warning("UAPI socket %s was removed; the interface should go down", self.path)
        self.removed.set()
        if self._on_removed is not None:
            self._on_removed()

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except (ConnectionAbortedError, InterruptedError):
                continue
            except OSError as exc:
                # Out of fds or memory: keep the server, retry shortly.
                logger.warning("UAPI %s: accept failed: %s", self.name, exc)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            self._stats = replace(self._stats, connections=self._stats.connections + 1)
            task = asyncio.create_task(self._serve(conn), name=f"uapi-conn-{self.name}")
            self._connections[task] = conn
            task.add_done_callback(self._connections.pop)

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        requests = UapiRequestReader()
        try:
            while data := await loop.sock_recv(conn, _READ_SIZE):
                requests.feed(data)
                replies: list[str] = []
                while (request := requests.next_request()) is not None:
                    replies.append(self._handle(request))
                if replies:
                    await loop.sock_sendall(conn, "".join(replies).encode())
        except UapiProtocolError as exc:
            self._stats = replace(self._stats, dropped=self._stats.dropped + 1)
            logger.warning("UAPI %s: closing connection: %s", self.name, exc)
        except ConnectionError:
            pass  # the client went away; nothing to answer
        finally:
            conn.close()

    def _handle(self, request: GetRequest | SetRequest | StatsRequest) -> str:
        if isinstance(request, StatsRequest):
            return self._stats_reply(request)
        if isinstance(request, GetRequest):
            self._stats = replace(self._stats, gets=self._stats.gets + 1)
            if request.error is not None:
                return self._failed("get", request.error)
            try:
                return format_get(self._backend.get_snapshot())
            except Exception:
                logger.exception("UAPI %s: get failed in the backend", self.name)
                return self._failed("get", UapiError(ERRNO_UNKNOWN, "backend error"))
        self._stats = replace(self._stats, sets=self._stats.sets + 1)
        try:
            ops = parse_set(request.lines)
            logger.debug("UAPI %s: set %r", self.name, ops)
            self._backend.apply(ops)
        except UapiError as exc:
            return self._failed("set", exc)
        except Exception:
            logger.exception("UAPI %s: set failed in the backend", self.name)
            return self._failed("set", UapiError(ERRNO_UNKNOWN, "backend error"))
        return format_set_reply(None)

    def _stats_reply(self, request: StatsRequest) -> str:
        self._stats = replace(self._stats, gets=self._stats.gets + 1)
        if request.error is not None:
            return self._failed("stats", request.error)
        if self._stats_source is None:
            return self._failed("stats", UapiError(errno.EOPNOTSUPP, "no stats here"))
        try:
            return format_stats(json.dumps(self._stats_source(), separators=(",", ":")))
        except Exception:
            logger.exception("UAPI %s: stats failed", self.name)
            return self._failed("stats", UapiError(ERRNO_UNKNOWN, "stats error"))

    def _failed(self, what: str, error: UapiError) -> str:
        self._stats = replace(self._stats, failed=self._stats.failed + 1)
        logger.warning("UAPI %s: %s failed (errno %d): %s", self.name, what, -error.errno, error)
        return format_set_reply(error)
