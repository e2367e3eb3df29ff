"""The tunnel's UDP sockets: one per family, batch send with UDP GSO and batch receive with GRO."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from wiretun.datapath.pure import gso_plan
from wiretun.wireguard.events import Endpoint

log = logging.getLogger(__name__)

SOL_UDP = 17
UDP_SEGMENT = 103  # not in Python's socket module
UDP_GRO = 104
SO_MARK = 36
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SOCKET_BUFFER = 7 << 20  # wireguard-go's socketBufferSize

GSO_MAX_BYTES = {socket.AF_INET: 65535 - 20 - 8, socket.AF_INET6: 65535 - 8}
RECV_BUFFER = 65535
# Datagrams kept for a socket that would block; beyond this we drop (and count) rather than
# grow without bound. The loop stops feeding us long before this when it honours backpressure.
MAX_PENDING = 8192

Datagram = bytes | bytearray | memoryview

_U16 = struct.Struct("=H")
_INT = struct.Struct("=i")
_CMSG_SPACE = socket.CMSG_SPACE(_INT.size)
# socket.MSG_TRUNC is an IntFlag, whose `&` costs ~0.3 us in Python code: the receive loop
# tests each datagram's flags against the plain int.
_MSG_TRUNC = int(socket.MSG_TRUNC)


def family_of(endpoint: Endpoint) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in endpoint[0] else socket.AF_INET


def gso_groups(datagrams: Sequence[Datagram], max_bytes: int) -> list[tuple[int, list[Datagram]]]:
    """Split `datagrams` (order kept) into UDP_SEGMENT sends: (segment size, datagrams).

    A group holds same-size datagrams, at most 64 of them and `max_bytes` in total; only its
    last datagram may be smaller, and that one closes it.
    """
    groups: list[tuple[int, list[Datagram]]] = []
    at = 0
    for size, count, _ in gso_plan([len(d) for d in datagrams], max_bytes):
        groups.append((size, list(datagrams[at : at + count])))
        at += count
    return groups


def split_coalesced(buf: memoryview, segment: int) -> list[bytes]:
    """Cut a GRO-coalesced receive buffer back into its datagrams."""
    if segment <= 0 or segment >= len(buf):
        return [bytes(buf)]
    return [bytes(buf[i : i + segment]) for i in range(0, len(buf), segment)]


@dataclass(frozen=True, slots=True)
class UdpStats:
    """A snapshot of one UdpBind's counters."""

    port: int
    datagrams_sent: int
    datagrams_received: int
    bytes_sent: int
    bytes_received: int
    send_calls: int
    gso_sends: int
    gro_receives: int
    pending: int
    gso: dict[str, bool] = field(default_factory=dict)
    gro: dict[str, bool] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)


class _FamilySocket:
    """One bound, non-blocking UDP socket plus its offload state."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.family = sock.family
        self.name = "ipv6" if sock.family == socket.AF_INET6 else "ipv4"
        self.gso = _probe(sock, UDP_SEGMENT) is not None
        self.gro = False
        with contextlib.suppress(OSError):
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            self.gro = _probe(sock, UDP_GRO) == 1
        self.pending: deque[tuple[Endpoint, list[Datagram]]] = deque()
        self.pending_count = 0
        self.writer_armed = False


def _probe(sock: socket.socket, option: int) -> int | None:
    try:
        return sock.getsockopt(SOL_UDP, option)
    except OSError:
        return None


def _set_buffers(sock: socket.socket) -> None:
    for plain, force in ((socket.SO_RCVBUF, SO_RCVBUFFORCE), (socket.SO_SNDBUF, SO_SNDBUFFORCE)):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
        # The FORCE variants pass rmem_max/wmem_max but need CAP_NET_ADMIN: best effort.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)


def _make_socket(family: socket.AddressFamily, host: str, port: int, fwmark: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if fwmark:
            # The mark lets policy routing send our encrypted datagrams around the tunnel.
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)
        _set_buffers(sock)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class UdpBind:
    """UDP sockets (IPv4 and IPv6, same port) with batch send/receive for the event loop.

    `send_batch` never blocks: what the kernel will not take now is kept (bounded) and sent
    when the socket becomes writable; `backlogged` tells the loop to stop producing.
    """

    def __init__(self, sockets: list[_FamilySocket], port: int, fwmark: int) -> None:
        self._socks = {s.family: s for s in sockets}
        self._recv_turn = 0  # which socket recv_batch reads first: rotates per call
        self.port = port
        self.fwmark = fwmark
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_writable: Callable[[], None] | None = None
        self._reading = False
        self._on_readable: Callable[[], None] | None = None
        self._waiter: asyncio.Future[None] | None = None  # wait_readable's
        self._waiter_loop: asyncio.AbstractEventLoop | None = None  # where its readers are
        self._stale: set[int] = set()  # fds whose next reader call repeats a consumed wake
        # The last recv_batch/recv_buffers found every socket empty (EAGAIN): the caller may
        # wait_readable instead of a receive that would find nothing.
        self.drained = False
        self._closed = False
        self._n = Counter[str]()
        self.drops = Counter[str]()
        self.events = Counter[str]()

    @classmethod
    def open(
        cls,
        port: int = 0,
        *,
        fwmark: int = 0,
        host4: str | None = "0.0.0.0",
        host6: str | None = "::",
    ) -> UdpBind:
        """Bind both families on `port` (0 picks one free in both); None skips a family.

        IPv6 that the host lacks (EAFNOSUPPORT/EADDRNOTAVAIL) is skipped with a warning.
        """
        if host4 is None and host6 is None:
            raise ValueError("need at least one address family")
        attempts = 8 if port == 0 else 1
        last: OSError | None = None
        for _ in range(attempts):
            socks: list[socket.socket] = []
            try:
                bound = port
                if host4 is not None:
                    socks.append(_make_socket(socket.AF_INET, host4, bound, fwmark))
                    bound = socks[0].getsockname()[1]
                if host6 is not None:
                    try:
                        socks.append(_make_socket(socket.AF_INET6, host6, bound, fwmark))
                    except OSError as e:
                        if e.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL) or not socks:
                            raise
                        log.warning("IPv6 UDP socket unavailable (%s); IPv4 only", e)
                bound = socks[-1].getsockname()[1]
                return cls([_FamilySocket(s) for s in socks], bound, fwmark)
            except OSError as e:
                for s in socks:
                    s.close()
                # With port 0 the v4 choice may be taken in v6: try another.
                if e.errno != errno.EADDRINUSE:
                    raise
                last = e
        assert last is not None
        raise last

    # -- asyncio wiring ---------------------------------------------------------------------

    def attach(
        self,
        loop: asyncio.AbstractEventLoop,
        on_readable: Callable[[], None],
        on_writable: Callable[[], None],
    ) -> None:
        """Call `on_readable` when a datagram may be waiting (while reading is resumed) and
        `on_writable` when a backlog has drained."""
        self._loop = loop
        self._on_readable = on_readable
        self._on_writable = on_writable

    def resume_reading(self) -> None:
        if self._reading or self._loop is None or self._closed:
            return
        self._reading = True
        assert self._on_readable is not None
        for s in self._socks.values():
            self._loop.add_reader(s.sock.fileno(), self._on_readable)

    def pause_reading(self) -> None:
        if not self._reading or self._loop is None:
            return
        self._reading = False
        for s in self._socks.values():
            self._loop.remove_reader(s.sock.fileno())

    @property
    def reading(self) -> bool:
        return self._reading

    async def wait_readable(self) -> None:
        """Wait until some socket is readable (for users without callbacks).

        The readers stay registered after a wake: the caller reads, and at idle waits again
        soon, so no epoll_ctl pair per socket and datagram. Level-triggered, they must not stay
        while nobody waits (the caller held back by a full TUN): they fire once then and go."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiter = fut
        if self._waiter_loop is None and not self._closed:
            for s in self._socks.values():
                fd = s.sock.fileno()
                loop.add_reader(fd, self._on_wait_readable, fd)
            self._waiter_loop = loop
        try:
            await fut
        except BaseException:
            self._remove_wait_readers()  # cancelled: nobody will read on our behalf
            raise
        finally:
            self._waiter = None

    def _on_wait_readable(self, fd: int) -> None:
        stale = self._stale
        if fd in stale:
            # The loop turn after a wake: epoll reports again the readiness that the waiter,
            # resumed earlier in this turn, has just consumed. Level-triggered, a real event
            # is reported again next turn.
            stale.discard(fd)
            return
        fut = self._waiter
        if fut is None:
            self._remove_wait_readers()
            return
        if not fut.done():
            fut.set_result(None)
        stale.add(fd)  # the waiter reads it before the next turn's report

    def _remove_wait_readers(self) -> None:
        loop, self._waiter_loop = self._waiter_loop, None
        self._stale.clear()
        if loop is None or self._closed or loop.is_closed():
            return
        for s in self._socks.values():
            loop.remove_reader(s.sock.fileno())

    # -- send -------------------------------------------------------------------------------

    @property
    def backlogged(self) -> bool:
        return any(s.pending_count for s in self._socks.values())

    def send_batch(self, endpoint: Endpoint, datagrams: Sequence[Datagram]) -> int:
        """Send `datagrams` to `endpoint`, GSO-grouped; returns how many went out now.

        The rest is queued (see `backlogged`) or dropped and counted (unreachable family,
        errors, a full queue).
        """
        if not datagrams:
            return 0
        s = self._socks.get(family_of(endpoint))
        if s is None:
            self.drops["no_socket_for_family"] += len(datagrams)
            return 0
        if s.pending_count:
            self._enqueue(s, endpoint, list(datagrams))
            return 0
        return self._send_now(s, endpoint, datagrams)

    def _send_now(self, s: _FamilySocket, endpoint: Endpoint, datagrams: Sequence[Datagram]) -> int:
        sent_before = self._n["datagrams_sent"]
        groups = (
            gso_groups(datagrams, GSO_MAX_BYTES[s.family])
            if s.gso and len(datagrams) > 1
            else [(len(d), [d]) for d in datagrams]
        )
        for i, (size, group) in enumerate(groups):
            done = self._send_group(s, endpoint, size, group)
            if done < len(group):
                # The socket would block: keep the unsent tail, in order, for _flush.
                rest = group[done:] + [d for _, g in groups[i + 1 :] for d in g]
                self._enqueue(s, endpoint, rest)
                break
        return self._n["datagrams_sent"] - sent_before

    def _send_group(
        self, s: _FamilySocket, endpoint: Endpoint, size: int, group: list[Datagram]
    ) -> int:
        """Send one group (one GSO sendmsg if it has several datagrams); returns how many
        datagrams were dealt with (sent or dropped and counted) before the socket would block."""
        if len(group) > 1 and s.gso:
            try:
                s.sock.sendmsg(group, [(SOL_UDP, UDP_SEGMENT, _U16.pack(size))], 0, endpoint)
            except BlockingIOError:
                return 0
            except OSError as e:
                if e.errno == errno.EIO:
                    # The egress device cannot checksum-offload: GSO is off for this family.
                    s.gso = False
                    self.events[f"gso_disabled_{s.name}"] += 1
                    log.info("UDP GSO disabled for %s after EIO", s.name)
                elif e.errno in (errno.EINVAL, errno.EMSGSIZE):
                    # A segment larger than the path allows: this group goes one by one.
                    self.events["gso_rejected"] += 1
                else:
                    self._drop_error("send", e, len(group))
                    return len(group)
            else:
                self._n["gso_sends"] += 1
                self._count_sent(group)
                return len(group)
        for i, d in enumerate(group):
            try:
                s.sock.sendto(d, endpoint)
            except BlockingIOError:
                return i
            except OSError as e:
                self._drop_error("send", e, 1)
                continue
            self._count_sent([d])
        return len(group)

    def send_gso(self, endpoint: Endpoint, buf: bytes, groups: Sequence[tuple[int, int]]) -> None:
        """Send one buffer of back-to-back datagrams: each (segment size, bytes) group with
        one UDP_SEGMENT sendmsg (the batch data path's output). What the socket will not
        take now, or what GSO refuses, goes the datagram way (`send_batch`'s queue and
        fallbacks): then the datagrams are cut apart, never otherwise."""
        s = self._socks.get(family_of(endpoint))
        view = memoryview(buf)
        at = 0
        i = 0
        for size, nbytes in groups:
            if s is None or s.pending_count or not s.gso or nbytes <= size:
                break
            cmsg = [(SOL_UDP, UDP_SEGMENT, _U16.pack(size))]
            try:
                s.sock.sendmsg([view[at : at + nbytes]], cmsg, 0, endpoint)
            except OSError:
                break  # would block or refused: _send_group decides, datagram by datagram
            n = self._n
            n["gso_sends"] += 1
            n["send_calls"] += 1
            n["datagrams_sent"] += -(-nbytes // size)
            n["bytes_sent"] += nbytes
            at += nbytes
            i += 1
        else:
            return
        rest: list[Datagram] = []
        for size, nbytes in groups[i:]:
            rest += [view[j : min(j + size, at + nbytes)] for j in range(at, at + nbytes, size)]
            at += nbytes
        self.send_batch(endpoint, rest)

    def _drop_error(self, what: str, e: OSError, n: int) -> None:
        self.drops[f"{what}_{errno.errorcode.get(e.errno or 0, str(e.errno))}"] += n

    def _count_sent(self, group: list[Datagram]) -> None:
        self._n["send_calls"] += 1
        self._n["datagrams_sent"] += len(group)
        self._n["bytes_sent"] += sum(len(d) for d in group)

    def _enqueue(self, s: _FamilySocket, endpoint: Endpoint, datagrams: list[Datagram]) -> None:
        room = MAX_PENDING - s.pending_count
        if room < len(datagrams):
            self.drops["send_queue_full"] += len(datagrams) - max(room, 0)
            datagrams = datagrams[: max(room, 0)]
        if not datagrams:
            return
        # Later callers' datagrams go behind ours; bytes copies keep memoryviews from dangling.
        s.pending.append((endpoint, [bytes(d) for d in datagrams]))
        s.pending_count += len(datagrams)
        self.events["send_would_block"] += 1
        if not s.writer_armed and self._loop is not None and not self._closed:
            s.writer_armed = True
            self._loop.add_writer(s.sock.fileno(), self._flush, s)

    def flush(self) -> None:
        """Try to send queued datagrams now (the loop does this on writability)."""
        for s in self._socks.values():
            if s.pending_count:
                self._flush(s)

    def _flush(self, s: _FamilySocket) -> None:
        while s.pending:
            endpoint, datagrams = s.pending.popleft()
            s.pending_count -= len(datagrams)
            before = s.pending_count
            self._send_now(s, endpoint, datagrams)
            if s.pending_count > before:
                # _send_now re-queued a tail at the back; it must go first.
                s.pending.rotate(1)
                return
        if s.writer_armed and self._loop is not None:
            s.writer_armed = False
            self._loop.remove_writer(s.sock.fileno())
        if not self.backlogged and self._on_writable is not None:
            self._on_writable()

    # -- receive ----------------------------------------------------------------------------

    def recv_batch(self, max_datagrams: int = 128) -> list[tuple[Datagram, Endpoint]]:
        """Datagrams that are waiting now (never blocks), GRO buffers split, up to about
        `max_datagrams` (a GRO buffer is never cut, so a batch may run over by one buffer).

        The datagrams of a GRO buffer are memoryviews of one fresh `bytes` per receive: no
        copy per datagram, and nothing is reused, so they stay valid as long as they are held.
        """
        out: list[tuple[Datagram, Endpoint]] = []
        for data, segment, endpoint in self.recv_buffers(max_datagrams):
            if segment < len(data):
                view = memoryview(data)
                out += [(view[i : i + segment], endpoint) for i in range(0, len(data), segment)]
            else:
                out.append((data, endpoint))
        return out

    def recv_buffers(self, max_datagrams: int = 128) -> list[tuple[bytes, int, Endpoint]]:
        """What `recv_batch` reads, unsplit: (receive buffer, segment size, source) per
        receive, a GRO buffer holding datagrams of `segment` bytes (the last maybe shorter),
        a plain one a single datagram (`segment` is then its length)."""
        out: list[tuple[bytes, int, Endpoint]] = []
        socks = list(self._socks.values())
        # Rotate the first reader, or a family that keeps a full batch queued would starve
        # the other (an IPv6 peer's handshakes under IPv4 load).
        first = self._recv_turn % len(socks) if socks else 0
        self._recv_turn = first + 1
        budget = [max_datagrams]
        drained = True
        for s in socks[first:] + socks[:first]:
            drained = self._recv_buffers_from(s, out, budget) and drained
        self.drained = drained
        return out

    def _recv_buffers_from(
        self, s: _FamilySocket, out: list[tuple[bytes, int, Endpoint]], budget: list[int]
    ) -> bool:
        """Receive into `out` within `budget`; True when the socket was found empty."""
        recvmsg = s.sock.recvmsg
        n_in = nbytes = gro = 0
        try:
            while budget[0] > 0:
                try:
                    data, ancdata, flags, addr = recvmsg(RECV_BUFFER, _CMSG_SPACE)
                except BlockingIOError:
                    return True
                except ConnectionRefusedError:
                    # An ICMP unreachable for an earlier send (peer not up yet): not fatal.
                    self.events["recv_connection_refused"] += 1
                    continue
                except OSError as e:
                    self._drop_error("recv", e, 1)
                    return False
                if flags & _MSG_TRUNC:
                    self.drops["recv_truncated"] += 1
                    continue
                n = len(data)
                nbytes += n
                segment = 0
                if ancdata:  # only a GRO receive carries a control message
                    for level, kind, cdata in ancdata:
                        if level == SOL_UDP and kind == UDP_GRO:
                            segment = _INT.unpack_from(cdata.ljust(_INT.size, b"\0"))[0]
                if 0 < segment < n:
                    gro += 1
                    count = -(-n // segment)
                else:
                    segment, count = n or 1, 1
                n_in += count
                budget[0] -= count
                # IPv4 gives (host, port) already; IPv6 adds flowinfo and scope id.
                out.append((data, segment, addr if len(addr) == 2 else (addr[0], addr[1])))
            return False
        finally:
            counters = self._n
            counters["bytes_received"] += nbytes
            counters["datagrams_received"] += n_in
            counters["gro_receives"] += gro

    # -- lifecycle --------------------------------------------------------------------------

    def stats(self) -> UdpStats:
        return UdpStats(
            port=self.port,
            datagrams_sent=self._n["datagrams_sent"],
            datagrams_received=self._n["datagrams_received"],
            bytes_sent=self._n["bytes_sent"],
            bytes_received=self._n["bytes_received"],
            send_calls=self._n["send_calls"],
            gso_sends=self._n["gso_sends"],
            gro_receives=self._n["gro_receives"],
            pending=sum(s.pending_count for s in self._socks.values()),
            gso={s.name: s.gso for s in self._socks.values()},
            gro={s.name: s.gro for s in self._socks.values()},
            drops=dict(self.drops),
            events=dict(self.events),
        )

    def set_fwmark(self, fwmark: int) -> None:
        """Change SO_MARK on every socket (UAPI `fwmark=`)."""
        for s in self._socks.values():
            s.sock.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)
        self.fwmark = fwmark

    def disable_gso(self) -> None:
        for s in self._socks.values():
            s.gso = False

    def disable_gro(self) -> None:
        for s in self._socks.values():
            with contextlib.suppress(OSError):
                s.sock.setsockopt(SOL_UDP, UDP_GRO, 0)
            s.gro = False

    def sockets(self) -> list[socket.socket]:
        return [s.sock for s in self._socks.values()]

    def close(self) -> None:
        if self._closed:
            return
        self.pause_reading()
        self._remove_wait_readers()
        for s in self._socks.values():
            if s.writer_armed and self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_writer(s.sock.fileno())
            if s.pending_count:
                self.drops["closed_with_pending"] += s.pending_count
            s.pending.clear()
            s.pending_count = 0
            s.sock.close()
        self._closed = True
