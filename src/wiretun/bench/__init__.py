"""`wiretun bench`: throughput and latency of wiretun vs wireguard-go vs bare veth in namespaces."""
