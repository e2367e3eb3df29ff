"""Interface name checks, the /dev/net/tun node and the offload codec hook."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from wiretun.tun import IdentityCodec, InvalidTunName, OffloadFeatures, Tun
from wiretun.tun.codec import offload_codec_factory
from wiretun.tun.device import ensure_tun_node, validate_name


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "a" * 16, "a/b", "a b", "a:b", "tun%d", "tab\t", "tün0", "nul\0x"],
)
def test_bad_names_are_refused_before_any_syscall(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_syscall(*args: object, **kwargs: object) -> int:
        raise AssertionError("a syscall was made for a bad name")

    monkeypatch.setattr(os, "open", no_syscall)
    with pytest.raises(InvalidTunName):
        Tun.open(name)
    with pytest.raises(ValueError):  # InvalidTunName is a ValueError too
        validate_name(name)


@pytest.mark.parametrize("name", ["wt0", "a" * 15, "tun-x_1.2", "WG@home"])
def test_good_names(name: str) -> None:
    assert validate_name(name) == name.encode()


def test_bad_queue_count_and_mtu() -> None:
    with pytest.raises(ValueError, match="queues"):
        Tun.open("wt0", queues=0)
    with pytest.raises(ValueError, match="mtu"):
        Tun.open("wt0", mtu=20)


def test_identity_codec_passes_packets_through() -> None:
    c = IdentityCodec()
    assert c.decode(b"\x45abc") == [b"\x45abc"]
    assert c.encode([b"a", b"b"]) == [b"a", b"b"]


def test_offload_codec_factory_gives_a_codec_per_queue() -> None:
    factory = offload_codec_factory()
    a, b = factory(OffloadFeatures(uso=False)), factory(OffloadFeatures(uso=False))
    assert a is not b
    # A frame with an all-zero virtio_net_hdr carries one plain packet.
    packet = bytes([0x45, 0, 0, 20]) + bytes(16)
    assert a.decode(bytes(10) + packet) == [packet]


@pytest.mark.root
def test_tun_node_is_created_when_missing(tmp_path: Path) -> None:
    path = tmp_path / "net" / "tun"
    ensure_tun_node(str(path))
    st = os.stat(path)
    assert stat.S_ISCHR(st.st_mode)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (10, 200)
    ensure_tun_node(str(path))  # present now: left alone


def test_tun_node_that_is_not_a_device_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tun"
    path.write_bytes(b"")
    with pytest.raises(Exception, match="not the TUN character device"):
        ensure_tun_node(str(path))
