"""The lab: throwaway network namespaces joined by veth pairs, and real peers in them
(`wiretun up`, wireguard-go) started until they say they are up. `wiretun bench`, `wiretun
demo` and the integration tests run on it; it needs root. The product never imports it."""
