"""The UAPI unix socket (/var/run/wireguard/NAME.sock) that lets `wg` drive a wiretun device."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from wiretun.ifname import is_wg_quick_ifname
from wiretun.tunnel.runfiles import ensure_dir
from wiretun.tunnel.uapi_protocol import (
    ERRNO_UNKNOWN,
    STATS_MARKER,
    DeviceSnapshot,
    GetRequest,
    SetOperation,
    SetParser,
    SetRequest,
    StatsRequest,
    UapiError,
    UapiProtocolError,
    UapiRequestReader,
    format_set_reply,
    format_stats,
)

logger = logging.getLogger(__name__)

SOCKET_DIR = "/var/run/wireguard"
_READ_SIZE = 64 * 1024
# `wg` connects, asks, reads and closes; nothing legitimate holds dozens of connections or
# sits silent for long. wireguard-go serves every connection it accepts (a goroutine each,
# their requests one at a time) and closes none for idling. Past MAX_CONNECTIONS we stop
# accepting: later clients wait in the listen backlog (then in connect()) until one closes,
# as they would wait for wireguard-go's lock, instead of being turned away.
MAX_CONNECTIONS = 32
LISTEN_BACKLOG = 16
IDLE_TIMEOUT = 30.0
# A large `get` is formatted and sent in slices of about this much work, with a loop turn
# between them, so the data path never waits behind `wg show` of 10k peers.
GET_SLICE_SECONDS = 0.005
GET_SLICE_BYTES = 64 * 1024


class UapiBackend(Protocol):
    """What the server needs from a device, called on the event loop thread.

    `get_pieces` gives a `get=1` reply in pieces (see format_get_pieces) from a consistent
    view taken when it is called; the server may run the loop between pieces. `apply` gets a
    set's operations in order, a piece at a time as they arrive; it raises UapiError (e.g.
    EADDRINUSE for a busy port)."""

    def get_snapshot(self) -> DeviceSnapshot: ...
    def get_pieces(self) -> Iterable[str]: ...
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
    waits: int = 0  # times accepting paused because MAX_CONNECTIONS were open
    idle_closed: int = 0  # connections closed after IDLE_TIMEOUT without a byte


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
        # start (wireguard-go uses 077 and gets 0700). No chmod afterwards: by path it would
        # follow a symlink put in the socket's place, and fchmod does not reach the file.
        old_umask = os.umask(0o177)
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
        sock.listen(LISTEN_BACKLOG)
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
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
        stats: Callable[[], Mapping[str, object] | Iterable[str]] | None = None,
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
        self._max_connections = max_connections
        self._idle_timeout = idle_timeout
        # `wiretun-stats=1`'s counters, if any: a JSON-able mapping, or one line of JSON in
        # pieces (sent in slices as a get is: a Tunnel's 10k peers are 200 ms of work).
        self._stats_source = stats
        self._listener: socket.socket | None = None
        self._identity: tuple[int, int] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Each connection's socket is kept here so close() can close it even if its task
        # was cancelled before it ever ran.
        self._connections: dict[asyncio.Task[None], socket.socket] = {}
        self._slot_free = asyncio.Event()  # set when a connection ends
        self._stats = UapiStats()  # immutable: replaced, so a reader's copy never changes
        self._closed = False

    async def start(self) -> None:
        """Create the socket (removing a stale one) and start serving.
        Raises UapiInUseError if another process serves this name."""
        if self._listener is not None or self._closed:
            raise RuntimeError("UapiServer.start() called twice or after close()")
        ensure_dir(self._socket_dir)  # others must not be able to swap our socket
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
            if len(self._connections) >= self._max_connections:
                await self._wait_for_a_slot()
                continue
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
            task.add_done_callback(self._connection_done)

    async def _wait_for_a_slot(self) -> None:
        """Accept nothing until a connection ends; meanwhile new clients queue in the
        kernel (the listen backlog, then a blocking connect())."""
        if not self._stats.waits:
            logger.warning("UAPI %s: %d connections open, new ones wait until one closes",
                           self.name, len(self._connections))  # fmt: skip
        self._stats = replace(self._stats, waits=self._stats.waits + 1)
        self._slot_free.clear()
        await self._slot_free.wait()

    def _connection_done(self, task: asyncio.Task[None]) -> None:
        self._connections.pop(task, None)
        self._slot_free.set()

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        requests = UapiRequestReader()
        setting: _SetInProgress | None = None
        replies: list[str] = []
        try:
            while True:
                try:
                    data = await asyncio.wait_for(
                        loop.sock_recv(conn, _READ_SIZE), self._idle_timeout
                    )
                except TimeoutError:
                    self._stats = replace(self._stats, idle_closed=self._stats.idle_closed + 1)
                    logger.info("UAPI %s: closing a connection idle for %ss", self.name,
                                self._idle_timeout)  # fmt: skip
                    return
                if not data:
                    return
                requests.feed(data)
                try:
                    while (request := requests.next_request()) is not None:
                        if isinstance(request, GetRequest):
                            await self._send(conn, replies)
                            await self._get(conn, request)
                            continue
                        if isinstance(request, StatsRequest):
                            await self._send(conn, replies)
                            await self._stats_reply(conn, request)
                            continue
                        setting = setting or _SetInProgress(SetParser())
                        self._set_piece(setting, request)
                        if request.final:
                            replies.append(self._end_set(setting))
                            setting = None
                finally:
                    # Replies to the requests before a malformed one still go out.
                    await self._send(conn, replies)
        except UapiProtocolError as exc:
            self._stats = replace(self._stats, dropped=self._stats.dropped + 1)
            logger.warning("UAPI %s: closing connection: %s", self.name, exc)
        except ConnectionError:
            pass  # the client went away; nothing to answer
        finally:
            conn.close()

    @staticmethod
    async def _send(conn: socket.socket, replies: list[str]) -> None:
        if replies:
            data = "".join(replies).encode()
            replies.clear()
            await asyncio.get_running_loop().sock_sendall(conn, data)

    async def _get(self, conn: socket.socket, request: GetRequest) -> None:
        """Answer a get in slices: format for GET_SLICE_SECONDS or GET_SLICE_BYTES, send,
        let the loop run, go on. The backend's view was taken when the get began."""
        self._stats = replace(self._stats, gets=self._stats.gets + 1)
        if request.error is not None:
            await self._send(conn, [self._failed("get", request.error)])
            return
        try:
            pieces = iter(self._backend.get_pieces())
            if self._stats_source is not None:  # first line: clients may ask for the stats
                pieces = itertools.chain([STATS_MARKER], pieces)
            await _send_in_slices(conn, pieces)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            logger.exception("UAPI %s: get failed in the backend", self.name)
            # The client may have part of a reply: an errno line ends it either way.
            failed = self._failed("get", UapiError(ERRNO_UNKNOWN, "backend error"))
            await asyncio.get_running_loop().sock_sendall(conn, failed.encode())

    def _set_piece(self, setting: _SetInProgress, request: SetRequest) -> None:
        """Parse and apply a piece of a set now (as wireguard-go applies line by line);
        after the first error the rest of the request is read and ignored."""
        ops, error = setting.parser.feed(request.lines)
        if request.final and error is None:
            ops += setting.parser.finish()
        if ops and setting.error is None:
            try:
                logger.debug("UAPI %s: set %r", self.name, ops)
                self._backend.apply(ops)
            except UapiError as exc:
                setting.error = exc
                setting.parser.failed = True
            except Exception:
                logger.exception("UAPI %s: set failed in the backend", self.name)
                setting.error = UapiError(ERRNO_UNKNOWN, "backend error")
                setting.parser.failed = True
        if setting.error is None and error is not None:
            setting.error = error

    def _end_set(self, setting: _SetInProgress) -> str:
        self._stats = replace(self._stats, sets=self._stats.sets + 1)
        if setting.error is not None:
            return self._failed("set", setting.error)
        return format_set_reply(None)

    async def _stats_reply(self, conn: socket.socket, request: StatsRequest) -> None:
        self._stats = replace(self._stats, gets=self._stats.gets + 1)
        if request.error is not None:
            await self._send(conn, [self._failed("stats", request.error)])
            return
        if self._stats_source is None:
            no_stats = UapiError(errno.EOPNOTSUPP, "no stats here")
            await self._send(conn, [self._failed("stats", no_stats)])
            return
        try:
            source = self._stats_source()
            if isinstance(source, Mapping):
                await self._send(conn, [format_stats(json.dumps(source, separators=(",", ":")))])
                return
            await _send_in_slices(conn, _stats_line(source))
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            logger.exception("UAPI %s: stats failed", self.name)
            # A line cut short ends here; the errno says the reply failed.
            failed = self._failed("stats", UapiError(ERRNO_UNKNOWN, "stats error"))
            await asyncio.get_running_loop().sock_sendall(conn, f"\n{failed}".encode())

    def _failed(self, what: str, error: UapiError) -> str:
        self._stats = replace(self._stats, failed=self._stats.failed + 1)
        logger.warning("UAPI %s: %s failed (errno %d): %s", self.name, what, -error.errno, error)
        return format_set_reply(error)


async def _send_in_slices(conn: socket.socket, pieces: Iterator[str]) -> None:
    """Send the pieces of one reply, building them for GET_SLICE_SECONDS or GET_SLICE_BYTES at
    a time with a loop turn between slices."""
    loop = asyncio.get_running_loop()
    while True:
        out: list[str] = []
        size = 0
        until = time.monotonic() + GET_SLICE_SECONDS
        for piece in pieces:
            out.append(piece)
            size += len(piece)
            if size >= GET_SLICE_BYTES or time.monotonic() >= until:
                break
        else:
            await loop.sock_sendall(conn, "".join(out).encode())
            return
        await loop.sock_sendall(conn, "".join(out).encode())
        await asyncio.sleep(0)  # a send that did not block did not yield


def _stats_line(pieces: Iterable[str]) -> Iterator[str]:
    """format_stats around a JSON line given in pieces (none may hold a newline)."""
    yield "stats="
    for piece in pieces:
        if "\n" in piece:
            raise ValueError("stats JSON must be one line")
        yield piece
    yield "\nerrno=0\n\n"


@dataclass
class _SetInProgress:
    """A set whose lines are still arriving: its parser and its first error."""

    parser: SetParser
    error: UapiError | None = None
