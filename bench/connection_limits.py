"""make bench-connection-limits: what the gateway's connection limits
hold against, with the defaults and with the limits lifted, side by side in
one run (the router as `headrace up` runs it, synthetic engine).

- A 100 MB header, streamed: what answers, after how many bytes and how
  long, and the router's resident memory at its peak.
- 20,000 idle connections opened at once and held: how many the router
  keeps, its open files and memory at the peak, and after its idle timeouts.

Numbers are the router process's own (/proc/PID/fd, VmRSS). The load
generator runs on the same machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import select
import socket
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.harness import markdown_table, running_mesh, write_results

CONFIG: dict[str, Any] = {
    "pools": {"smollm2": {"engine": {"kind": "synthetic"}, "workers": 1}},
    "models": {"smollm2": {"default_version": "1", "versions": {"1": {"pool": "smollm2"}}}},
    "default_embedding_model": "",
    "cache": {"semantic": {"enabled": False}},
}
# Limits lifted: what the gateway did before it had any.
UNBOUNDED = {
    "max_connections": 1_000_000,
    "max_header_bytes": 1 << 30,
    "header_timeout_s": 3600.0,
    "body_timeout_s": 3600.0,
    "keepalive_timeout_s": 3600,
}
HEADER_MB = 100
CONNECTIONS = 20_000
# Client processes holding them (each under the per-process open-file limit).
HOLDERS = 4


def router_pid(mesh: Any) -> int:
    return int(next(p.pid for p in mesh.processes if p.name == "router"))


def open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


class PeakSampler:
    """The router's largest RSS and open-file count while sampling."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.rss_mib = rss_mib(pid)
        self.files = open_files(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.rss_mib = max(self.rss_mib, rss_mib(self._pid))
                self.files = max(self.files, open_files(self._pid))
            except OSError:
                return

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def huge_header(port: int, pid: int) -> dict[str, Any]:
    chunk = b"a" * (1 << 20)
    sent = 0
    answer = b""
    started = time.perf_counter()
    with PeakSampler(pid) as peak, socket.create_connection(("127.0.0.1", port)) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            for _ in range(HEADER_MB):
                sock.sendall(chunk)
                sent += len(chunk)
                if select.select([sock], [], [], 0)[0]:
                    answer = sock.recv(65536)
                    break
            else:
                sock.sendall(b"\r\n\r\n")
        except OSError:
            pass
        sock.settimeout(30)
        try:
            while b"\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace") or "(connection closed)"
    return {
        "answer": status,
        "sent_mib": round(sent / (1 << 20), 1),
        "seconds": round(time.perf_counter() - started, 2),
        "router_peak_rss_mib": round(peak.rss_mib, 1),
    }


def _holder(port: int, count: int, commands: Connection) -> None:
    """In a child process (each has its own open-file limit): open `count`
    connections, then answer "count" with how many are still open."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        sockets.append(sock)
    commands.send("opened")
    while commands.recv() == "count":
        commands.send(_still_open(sockets))
    for sock in sockets:
        sock.close()


def idle_flood(port: int, pid: int, *, hold_s: float) -> dict[str, Any]:
    baseline = {"files": open_files(pid), "rss_mib": round(rss_mib(pid), 1)}
    per_holder = CONNECTIONS // HOLDERS
    started = time.perf_counter()
    with PeakSampler(pid) as peak:
        holders = []
        for _ in range(HOLDERS):
            ours, theirs = multiprocessing.Pipe()
            process = multiprocessing.Process(target=_holder, args=(port, per_holder, theirs), daemon=True)
            process.start()
            holders.append((process, ours))
        for _process, pipe in holders:
            assert pipe.recv() == "opened"
        opened_s = time.perf_counter() - started
        time.sleep(2.0)
        held_at_peak = _count(holders)
        time.sleep(hold_s)
    held_after = _count(holders)
    after = {"files": open_files(pid), "rss_mib": round(rss_mib(pid), 1)}
    for process, pipe in holders:
        pipe.send("close")
        process.join(30)
    return {
        "opened_s": round(opened_s, 1),
        "held_2s_after": held_at_peak,
        f"held_{hold_s:g}s_later": held_after,
        "router_files_before": baseline["files"],
        "router_files_peak": peak.files,
        f"router_files_{hold_s:g}s_later": after["files"],
        "router_rss_before_mib": baseline["rss_mib"],
        "router_rss_peak_mib": round(peak.rss_mib, 1),
    }


def _count(holders: list[tuple[multiprocessing.Process, Connection]]) -> int:
    total = 0
    for _process, pipe in holders:
        pipe.send("count")
        total += int(pipe.recv())
    return total


def _still_open(sockets: list[socket.socket]) -> int:
    """Connections the server has not closed (nor answered and closed)."""
    open_count = 0
    for sock in sockets:
        try:
            data = sock.recv(65536, socket.MSG_PEEK)
        except BlockingIOError:
            open_count += 1
            continue
        except OSError:
            continue
        if data and b"503" not in data.split(b"\r\n", 1)[0]:
            open_count += 1
    return open_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hold-s", type=float, default=12.0, help="how long the idle connections are held")
    args = parser.parse_args()
    # As many open files as allowed, here and in the router spawned after this.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results: dict[str, Any] = {}
    for name, gateway in (("defaults", {}), ("limits lifted", UNBOUNDED)):
        with running_mesh({**CONFIG, "gateway": gateway}, timeout_s=300) as mesh:
            port = mesh.settings.router.http_port
            pid = router_pid(mesh)
            results[name] = {
                "huge_header": huge_header(port, pid),
                "idle_flood": idle_flood(port, pid, hold_s=args.hold_s),
            }
            print(name, results[name], flush=True)
    rows = [
        [name, key, value] for name, parts in results.items() for part in parts.values() for key, value in part.items()
    ]
    write_results("connection-limits", results, markdown_table(["gateway", "measure", "value"], rows))


if __name__ == "__main__":
    main()
