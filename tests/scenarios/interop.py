"""Ready-made overlays between wiretun and wireguard-go peers for the robustness tests."""

from __future__ import annotations

from wiretun.lab.peers import PeerSpec, WireguardGoPeer, WiretunPeer


def wireguard_go_initiates_to(
    wg: WireguardGoPeer, wt: WiretunPeer, wt_endpoint: str, *, wt_port: int, wg_port: int = 51821
) -> None:
    """Overlay 10.9.0.2 (wireguard-go) -> 10.9.0.1 (wiretun): start wiretun listening on
    `wt_port` with no endpoint for its peer (it learns it), then point wireguard-go at
    `wt_endpoint` (host:port on the underlay)."""
    wt.write_config(
        addresses=["10.9.0.1/24"],
        listen_port=wt_port,
        peers=[PeerSpec(wg.keys.public, ["10.9.0.2/32"])],
    )
    wt.start()
    wg.configure(listen_port=wg_port)
    wg.add_peer(wt.keys.public, allowed_ips=["10.9.0.1/32"], endpoint=wt_endpoint)
    wg.link_up(["10.9.0.2/24"])
