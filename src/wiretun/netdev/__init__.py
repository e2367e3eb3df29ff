"""Device manager on pyroute2: a tunnel device's addresses, MTU, routes and fwmark policy rule."""

from wiretun.netdev.errors import NetdevError
from wiretun.netdev.manager import AddressResult, IpStack, TunDeviceManager
from wiretun.netdev.mark import mark_socket, socket_mark
from wiretun.netdev.spec import (
    DEFAULT_FWMARK,
    DEFAULT_MTU,
    DEFAULT_RULE_PRIORITY,
    DEFAULT_TABLE,
    DEFAULT_TXQUEUELEN,
)

__all__ = [
    "DEFAULT_FWMARK",
    "DEFAULT_MTU",
    "DEFAULT_RULE_PRIORITY",
    "DEFAULT_TABLE",
    "DEFAULT_TXQUEUELEN",
    "AddressResult",
    "IpStack",
    "NetdevError",
    "TunDeviceManager",
    "mark_socket",
    "socket_mark",
]
