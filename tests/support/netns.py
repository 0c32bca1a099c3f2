"""Hosts on this machine, for multi-host tests: network namespaces joined by
a bridge, each with a private 10.x address, created by the test and
removed afterwards (root and `ip netns` needed). Nothing is added to the
machine's own namespace: every address the test uses lives inside the
namespaces it created."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def _ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")


def netns_unavailable() -> str | None:
    """Why this machine cannot make namespaces (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"hrprobe{os.getpid() % 100000}"
    try:
        _ip("netns", "add", name)
    except (RuntimeError, OSError) as exc:
        return f"`ip netns add` is not permitted here: {exc}"
    with contextlib.suppress(RuntimeError):
        _ip("netns", "del", name)
    return None


@dataclass
class Host:
    """One namespace: its name and its address on the shared bridge."""

    netns: str
    address: str
    # Its end of the link to the bridge (inside the namespace).
    link: str

    def link_down(self) -> None:
        """Cut this host off: its traffic stops without a word (no RST)."""
        _ip("link", "set", self.link, "down", netns=self.netns)


@dataclass
class Processes:
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, host: Host, argv: Sequence[str], *, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", host.netns, *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


@contextlib.contextmanager
def bridged_hosts(names: Sequence[str]) -> Iterator[dict[str, Host]]:
    """Namespaces `names` (the first holds the bridge), all on one private
    /24, the first at .1. Removed on exit (with their links)."""
    tag = f"hr{os.getpid() % 10000}{random.randrange(100)}"
    subnet = f"10.{random.randrange(200, 250)}.{random.randrange(1, 250)}"
    namespaces = [f"{tag}{name}" for name in names]
    hosts: dict[str, Host] = {}
    try:
        for netns in namespaces:
            _ip("netns", "add", netns)
            _ip("link", "set", "lo", "up", netns=netns)
        hub = namespaces[0]
        _ip("link", "add", "br0", "type", "bridge", netns=hub)
        _ip("addr", "add", f"{subnet}.1/24", "dev", "br0", netns=hub)
        _ip("link", "set", "br0", "up", netns=hub)
        hosts[names[0]] = Host(hub, f"{subnet}.1", "br0")
        for index, (name, netns) in enumerate(zip(names[1:], namespaces[1:], strict=True), start=2):
            # A veth pair: one end on the bridge in the hub, the other in the host.
            hub_end, host_end = f"v{index}h", f"v{index}"
            _ip("link", "add", hub_end, "type", "veth", "peer", "name", host_end, "netns", netns, netns=hub)
            _ip("link", "set", hub_end, "master", "br0", netns=hub)
            _ip("link", "set", hub_end, "up", netns=hub)
            _ip("addr", "add", f"{subnet}.{index}/24", "dev", host_end, netns=netns)
            _ip("link", "set", host_end, "up", netns=netns)
            hosts[name] = Host(netns, f"{subnet}.{index}", host_end)
        yield hosts
    finally:
        for netns in reversed(namespaces):
            with contextlib.suppress(RuntimeError, OSError):
                _ip("netns", "del", netns)
