"""Opening TUN queue fds (/dev/net/tun, TUNSETIFF, offloads, MTU, names) and probing the link."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import struct
from dataclasses import dataclass

from wiretun.ifname import ifname_problem
from wiretun.tun.errors import InvalidTunName, TunError, TunExists

TUN_PATH = "/dev/net/tun"
TUN_MAJOR, TUN_MINOR = 10, 200

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
SIOCSIFMTU = 0x8922

IFF_TUN = 0x0001
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

_IFREQ_FLAGS = struct.Struct("16sH22x")
_IFREQ_INT = struct.Struct("16si20x")


def validate_name(name: str) -> bytes:
    """The name as bytes for an ifreq, or InvalidTunName (the kernel's rule, see
    wiretun.ifname); no syscall is made."""
    problem = ifname_problem(name)
    if problem is not None:
        raise InvalidTunName(problem)
    return name.encode("ascii")


def ensure_tun_node(path: str = TUN_PATH) -> None:
    """Create the TUN character device (10:200) if it is missing, as containers often lack it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        try:
            os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(TUN_MAJOR, TUN_MINOR))
        except FileExistsError:
            pass  # created concurrently by someone else
        except OSError as e:
            raise TunError(f"cannot create {path}: {e.strerror}") from e
        return
    if not stat.S_ISCHR(st.st_mode) or os.major(st.st_rdev) != TUN_MAJOR:
        raise TunError(f"{path} exists but is not the TUN character device")


def open_queue(
    name: str,
    *,
    exclusive: bool,
    vnet_hdr: bool,
    multi_queue: bool = True,
    path: str = TUN_PATH,
) -> int:
    """One non-blocking queue fd of TUN `name`; `exclusive` creates the device.

    A device created without `multi_queue` has exactly one queue: the kernel refuses any
    further attach (EBUSY, or EINVAL with IFF_MULTI_QUEUE), so no foreign process can take
    a share of our packets.
    """
    raw = validate_name(name)
    flags = IFF_TUN | IFF_NO_PI
    if multi_queue:
        flags |= IFF_MULTI_QUEUE
    if vnet_hdr:
        flags |= IFF_VNET_HDR
    if exclusive:
        flags |= IFF_TUN_EXCL
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise TunError(f"cannot open {path}: {e.strerror}") from e
    try:
        fcntl.ioctl(fd, TUNSETIFF, _IFREQ_FLAGS.pack(raw, flags))
    except OSError as e:
        os.close(fd)
        if exclusive and e.errno == errno.EBUSY:
            raise TunExists(f"interface {name!r} already exists") from e
        raise TunError(f"TUNSETIFF {name!r}: {e.strerror}") from e
    return fd


def set_offload(fd: int) -> bool:
    """Enable checksum + TSO offloads (required) and UDP segmentation (probed); True if USO."""
    base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, base)
    except OSError as e:
        raise TunError(f"TUNSETOFFLOAD: {e.strerror}") from e
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, base | TUN_F_USO4 | TUN_F_USO6)
    except OSError:
        return False  # USO needs Linux 6.2; TSO alone stays in force
    return True


def set_mtu(name: str, mtu: int) -> None:
    """Set the MTU with SIOCSIFMTU on a socket of the calling thread's network namespace."""
    raw = validate_name(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            fcntl.ioctl(s.fileno(), SIOCSIFMTU, _IFREQ_INT.pack(raw, mtu))
        except OSError as e:
            raise TunError(f"setting MTU {mtu} on {name!r}: {e.strerror}") from e


# rtnetlink, just enough to read one link's TUN queue count and drop counter.
RTM_NEWLINK, RTM_GETLINK = 16, 18
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
IFLA_IFNAME, IFLA_LINKINFO, IFLA_STATS64 = 3, 18, 23
IFLA_INFO_DATA = 2
IFLA_TUN_NUM_QUEUES = 8
_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_RTATTR = struct.Struct("=HH")
_STATS64_TX_DROPPED = 7  # u64 index in struct rtnl_link_stats64


@dataclass(frozen=True, slots=True)
class LinkInfo:
    ifindex: int
    num_queues: int
    tx_dropped: int


def _attrs(data: bytes, offset: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while offset + 4 <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return out


class LinkProbe:
    """A netlink socket (bound to the namespace it was made in) that reads one TUN's state."""

    def __init__(self, name: str) -> None:
        self._name = validate_name(name)
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
        self._sock.settimeout(2.0)
        self._sock.bind((0, 0))
        self._seq = 0
        self.ifindex = 0
        self.ifindex = self.query().ifindex

    def query(self) -> LinkInfo:
        """The link's current state; TunError (errno as cause) if it is gone."""
        self._seq += 1
        attrs = b""
        if not self.ifindex:
            name = self._name + b"\0"
            attrs = _RTATTR.pack(4 + len(name), IFLA_IFNAME) + name
            attrs += b"\0" * (-len(attrs) % 4)
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, self.ifindex, 0, 0) + attrs
        hdr = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETLINK, NLM_F_REQUEST, self._seq, 0)
        try:
            self._sock.send(hdr + body)
            while True:
                reply = self._sock.recv(65536)
                _, kind, _, seq, _ = _NLMSGHDR.unpack_from(reply, 0)
                if seq == self._seq:
                    break
        except OSError as e:
            raise TunError(f"netlink RTM_GETLINK: {e}") from e
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", reply, _NLMSGHDR.size)[0]
            raise TunError("netlink RTM_GETLINK failed") from OSError(code, os.strerror(code))
        if kind != RTM_NEWLINK:
            raise TunError(f"unexpected netlink reply type {kind}")
        _, _, ifindex, _, _ = _IFINFOMSG.unpack_from(reply, _NLMSGHDR.size)
        top = _attrs(reply, _NLMSGHDR.size + _IFINFOMSG.size)
        info = _attrs(top.get(IFLA_LINKINFO, b""), 0)
        tun = _attrs(info.get(IFLA_INFO_DATA, b""), 0)
        queues = tun.get(IFLA_TUN_NUM_QUEUES, b"")
        stats = top.get(IFLA_STATS64, b"")
        dropped_at = 8 * _STATS64_TX_DROPPED
        return LinkInfo(
            ifindex=ifindex,
            num_queues=struct.unpack("=I", queues)[0] if len(queues) == 4 else -1,
            tx_dropped=(
                struct.unpack_from("=Q", stats, dropped_at)[0]
                if len(stats) >= dropped_at + 8
                else -1
            ),
        )

    def close(self) -> None:
        self._sock.close()
