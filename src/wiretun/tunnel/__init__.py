"""The asyncio shell around the WireGuard core: config loading, UAPI, UDP and the event loop."""
