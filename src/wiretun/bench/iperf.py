"""iperf3 runs between two namespaces and the parsing of their JSON output."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from wiretun.bench.plan import Workload
from wiretun.lab.netns import NetNS


class IperfError(RuntimeError):
    """iperf3 reported an error, timed out, or wrote output we cannot read."""


@dataclass(frozen=True, slots=True)
class UdpStats:
    packets: int
    lost_packets: int
    lost_percent: float
    jitter_ms: float
    out_of_order: int


@dataclass(frozen=True, slots=True)
class IperfResult:
    gbps: float  # as received
    bytes: int  # as received
    seconds: float
    retransmits: int | None  # sender side, TCP only
    udp: UdpStats | None


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise IperfError(f"iperf3 JSON has no {key!r} object")
    return value


def parse_result(text: str) -> IperfResult:
    """Read a client's `iperf3 -J` output (TCP or UDP, either direction)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise IperfError(f"iperf3 output is not JSON: {text[:200]!r}") from e
    if not isinstance(data, dict):
        raise IperfError("iperf3 JSON is not an object")
    if data.get("error"):
        raise IperfError(f"iperf3: {data['error']}")
    end = _section(data, "end")
    try:
        received = _section(end, "sum_received")
        sent = _section(end, "sum_sent")
        protocol = _section(_section(data, "start"), "test_start").get("protocol")
        udp = None
        if protocol == "UDP":
            streams = end.get("streams", [])
            udp = UdpStats(
                packets=int(received["packets"]),
                lost_packets=int(received["lost_packets"]),
                lost_percent=float(received["lost_percent"]),
                jitter_ms=float(received["jitter_ms"]),
                out_of_order=sum(int(s["udp"].get("out_of_order", 0)) for s in streams),
            )
        retransmits = sent.get("retransmits")
        return IperfResult(
            gbps=float(received["bits_per_second"]) / 1e9,
            bytes=int(received["bytes"]),
            seconds=float(received["seconds"]),
            retransmits=int(retransmits) if retransmits is not None else None,
            udp=udp,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise IperfError(f"iperf3 JSON lacks a field: {e!r}") from e


def client_args(
    target: str, port: int, workload: Workload, duration: float, udp_rate_mbps: int
) -> list[str]:
    args = ["iperf3", "-c", target, "-p", str(port), "-t", f"{duration:g}", "-J"]
    args += ["--connect-timeout", "5000"]
    if workload.reverse:
        args.append("-R")
    if workload.streams > 1:
        args += ["-P", str(workload.streams)]
    if workload.kind == "udp":
        args += ["-u", "-b", f"{udp_rate_mbps}M"]
    return args


def _wait_listening(ns: NetNS, port: int, server: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ns.run("ss", "-Hltn", f"sport = :{port}").strip():
            return
        if server.poll() is not None:
            raise IperfError(f"iperf3 server exited with {server.returncode} before listening")
        time.sleep(0.05)
    raise IperfError(f"iperf3 server not listening on port {port} after {timeout:g} s")


def run_iperf(
    server_ns: NetNS,
    client_ns: NetNS,
    target: str,
    *,
    port: int,
    workload: Workload,
    duration: float,
    udp_rate_mbps: int,
) -> IperfResult:
    """One iperf3 test: a one-off server in `server_ns`, the client in `client_ns`."""
    server = server_ns.popen(
        "iperf3", "-s", "-1", "-p", str(port),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_listening(server_ns, port, server, timeout=5)
        try:
            out = client_ns.run(
                *client_args(target, port, workload, duration, udp_rate_mbps),
                check=False,
                timeout=duration + 30,
            )
        except subprocess.TimeoutExpired as e:
            raise IperfError(f"iperf3 client did not finish within {duration + 30:g} s") from e
        return parse_result(out)
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=3)
        if server.poll() is None:
            server.kill()
            server.wait()


def iperf3_version() -> str:
    proc = subprocess.run(["iperf3", "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.splitlines()[0].strip() if proc.stdout else "unknown"
