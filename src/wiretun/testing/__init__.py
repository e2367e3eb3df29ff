"""An in-memory test kit to build on: a fake clock and datagram network joining WireGuard
Devices (`wgpair`), no root, no sockets, no real time. The product never imports it, and it
never imports the lab (`wiretun.lab`)."""
