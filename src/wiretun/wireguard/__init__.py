"""Sans-I/O WireGuard protocol core: crypto, messages, handshake, cookies, sessions, timers."""
