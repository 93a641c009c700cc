"""Network namespaces for the chaos suite: a vantage's prober in a namespace of its own, joined to the
host by a veth pair, so a scenario can cut that vantage off by taking its link down, as a network
partition would, without touching the clusters or the other vantages.

Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2. `require_netns()` skips a scenario locally
when they are missing and fails it under CI=true, where a missing capability must never pass as a skip.
Every name is unique per process and call, and `namespace()` removes the namespace and its link in a
`finally`, also when the scenario fails.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from tests.daemons import DaemonProcess

IN_CI = os.environ.get("CI", "").lower() == "true"
_SEQ = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


def missing_capability() -> str | None:
    """Why network namespaces cannot be made here, or None when they can (tried for real)."""
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    probe = f"fo-cap-{os.getpid()}-{next(_SEQ)}"
    try:
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"`ip netns add` failed: {made.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def require_netns() -> None:
    """Skip (locally) or fail (CI=true) the calling scenario when namespaces cannot be made."""
    reason = missing_capability()
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"{reason}, and CI=true: the vantage cut-off scenario must run in CI")
    pytest.skip(reason)


@dataclass
class Namespace:
    """A namespace joined to the host by `host_if` (address `host_ip`) and `ns_if` (`ns_ip`)."""

    name: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str

    def link_down(self) -> None:
        """Cut the namespace off: its only link loses carrier, nothing goes in or out."""
        _ip("link", "set", self.host_if, "down")

    def link_up(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def process(self, daemon: DaemonProcess) -> NamespacedProcess:
        """`daemon`'s command, to be started inside this namespace."""
        return NamespacedProcess(
            daemon.config, daemon.log, daemon.api, daemon.name, daemon.command, dict(daemon.env), ns=self.name
        )


@dataclass
class NamespacedProcess(DaemonProcess):
    """A `failover` command run by `ip netns exec` (which execs it: the pid is the command's)."""

    ns: str = ""

    async def start(self, *extra: str) -> NamespacedProcess:
        self.proc = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            self.ns,
            sys.executable,
            "-m",
            "orchestrator",
            "--log-format",
            "json",
            *self.command,
            "--config",
            str(self.config),
            *extra,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=self.log.open("a"),
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        return self


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 in 10.200.0.0/16 that no interface of the host uses yet."""
    used = _ip("-4", "-o", "addr", "show").stdout
    base = int(ipaddress.IPv4Address("10.200.0.0"))
    start = (os.getpid() * 7 + next(_SEQ) * 4) % 16384
    for step in range(16384):
        net = ipaddress.IPv4Network((base + ((start + step) % 16384) * 4, 30))
        if f" {net[1]}/" not in used and f" {net[2]}/" not in used:
            return net
    raise RuntimeError("no free /30 in 10.200.0.0/16")


@contextmanager
def namespace(tag: str) -> Iterator[Namespace]:
    """A fresh namespace with a veth pair and addresses; removed (with its link) whatever happens."""
    seq = next(_SEQ)
    short = f"{os.getpid() % 100000}{seq}"
    net = _free_subnet()
    ns = Namespace(f"fo-{tag}-{short}", f"fo{short}h", f"fo{short}n", str(net[1]), str(net[2]))
    assert len(ns.host_if) <= 15, ns.host_if  # the kernel's limit for interface names
    try:
        _ip("netns", "add", ns.name)
        _ip("link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if)
        _ip("link", "set", ns.ns_if, "netns", ns.name)
        _ip("addr", "add", f"{ns.host_ip}/30", "dev", ns.host_if)
        _ip("link", "set", ns.host_if, "up")
        inside = ("netns", "exec", ns.name, "ip")
        _ip(*inside, "addr", "add", f"{ns.ns_ip}/30", "dev", ns.ns_if)
        _ip(*inside, "link", "set", ns.ns_if, "up")
        _ip(*inside, "link", "set", "lo", "up")
        yield ns
    finally:
        _ip("link", "del", ns.host_if, check=False)  # deletes the peer inside the namespace too
        _ip("netns", "del", ns.name, check=False)
