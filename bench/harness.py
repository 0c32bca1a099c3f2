"""Shared benchmark machinery: a private mesh as real processes (its own
Redis, ports and state directory), load loops, percentiles, resident
memory, and results written as a table and JSON under bench/results/."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc.aio
import yaml

from headrace.local.deployment_secrets import local_deployment
from headrace.local.mesh import LocalMesh, ServiceProcess
from headrace.local.redis_server import RedisServer, free_port, free_port_run
from headrace.runtime.channels import open_channel
from headrace.runtime.config import Settings
from headrace.runtime.service_certs import Role
from headrace.runtime.service_identity import service_identity

RESULTS_DIR = Path(__file__).parent / "results"


@dataclass
class MeshUnderTest:
    settings: Settings
    processes: list[ServiceProcess]
    router_address: str
    scheduler_address: str
    # The router's HTTP gateway.
    http_url: str
    # The mesh's private Redis server (a process of this one's group).
    redis_pid: int | None = None

    def internal_channel(self, address: str, server: Role) -> grpc.aio.Channel:
        """A channel to the cache, scheduler or a worker, calling as the router
        (with the deployment's certificate when the mesh has API keys)."""
        identity = service_identity(local_deployment(self.settings, create=False), Role.ROUTER)
        return open_channel(address, self.settings.limits, identity, server=server)

    def worker_addresses(self) -> list[str]:
        return [p.address for p in self.processes if p.module == "services.worker"]

    def rss_mib(self) -> dict[str, float]:
        """Resident memory of each service with everything it spawned."""
        return {p.name: process_group_rss_mib(p.pid) for p in self.processes}


@contextmanager
def running_mesh(
    config: dict[str, Any], *, timeout_s: float = 900.0, supervised: bool = False
) -> Iterator[MeshUnderTest]:
    """Start the mesh described by `config` (YAML-shaped) on free ports with
    a private Redis, and stop all of it afterwards. `supervised`: as
    `headrace up --detach` starts it, under its supervisor (restarts, and
    the local autoscaling actuator)."""
    with tempfile.TemporaryDirectory(prefix="headrace-bench-") as tmp:
        redis = RedisServer(Path(tmp) / "redis", appendonly=False)
        redis.start()
        config = {
            **config,
            "redis_url": redis.url,
            "state_dir": str(Path(tmp) / "state"),
            "router": {
                "port": free_port(),
                "http_port": free_port(),
                "metrics_port": free_port(),
                **config.get("router", {}),
            },
            "cache": {"port": free_port(), "metrics_port": free_port(), **config.get("cache", {})},
            "scheduler": {"port": free_port(), "metrics_port": free_port(), **config.get("scheduler", {})},
            "worker": {
                "base_port": free_port_run(_worker_ports(config)),
                "metrics_port_offset": None,
                **config.get("worker", {}),
            },
        }
        config_path = Path(tmp) / "headrace.yaml"
        config_path.write_text(yaml.safe_dump(config))
        previous = os.environ.get("HEADRACE_CONFIG")
        os.environ["HEADRACE_CONFIG"] = str(config_path)
        try:
            settings = Settings()
            mesh = LocalMesh(settings, echo=lambda line: print(line, flush=True))
            if supervised:
                _headrace_cli("up", "--detach", "--timeout", str(timeout_s))
                processes = mesh.running()
            else:
                processes = mesh.up(env_overrides={"HEADRACE_CONFIG": str(config_path)}, timeout_s=timeout_s)
            try:
                yield MeshUnderTest(
                    settings=settings,
                    processes=processes,
                    router_address=f"127.0.0.1:{settings.router.port}",
                    http_url=f"http://127.0.0.1:{settings.router.http_port}",
                    scheduler_address=f"127.0.0.1:{settings.scheduler.port}",
                    redis_pid=redis.pid,
                )
            finally:
                mesh.down()
        finally:
            if previous is None:
                os.environ.pop("HEADRACE_CONFIG", None)
            else:
                os.environ["HEADRACE_CONFIG"] = previous
            redis.stop()


def _worker_ports(config: dict[str, Any]) -> int:
    """Worker ports the mesh may take: each pool's workers, or its
    autoscaler's max_workers where that is more."""
    scheduler_pools = config.get("scheduler", {}).get("pools", {})
    total = 0
    for name, spec in config.get("pools", {}).items():
        scaling = scheduler_pools.get(name, {}).get("autoscale", {})
        workers = spec.get("workers", 1)
        total += max(workers, scaling.get("max_workers", 4)) if scaling.get("enabled") else workers
    return total


def _headrace_cli(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "headrace.cli", *args], capture_output=True, text=True)
    print(done.stdout, end="", flush=True)
    if done.returncode != 0:
        raise RuntimeError(f"headrace {' '.join(args)} failed:\n{done.stdout}{done.stderr}")


def _group_members(pgid: int) -> Iterator[tuple[Path, list[str]]]:
    """(/proc/PID, the fields of its stat after the command name) for each
    process of a process group."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after ')'.
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                yield stat.parent, fields
        except (OSError, IndexError, ValueError):
            continue


def process_group_rss_mib(pgid: int) -> float:
    total_kib = 0
    for proc, _fields in _group_members(pgid):
        try:
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total_kib / 1024.0


def process_group_cpu_s(pgid: int) -> float:
    """CPU seconds used so far by the live processes of a process group."""
    ticks = sum(int(fields[11]) + int(fields[12]) for _proc, fields in _group_members(pgid))
    return ticks / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """CPU seconds used so far by one process (its threads included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class LatencySample:
    ttft_s: list[float] = field(default_factory=list)
    total_s: list[float] = field(default_factory=list)
    errors: int = 0

    def summary_ms(self) -> dict[str, float]:
        return {
            "ttft_p50_ms": percentile(self.ttft_s, 50) * 1000,
            "ttft_p99_ms": percentile(self.ttft_s, 99) * 1000,
            "total_p50_ms": percentile(self.total_s, 50) * 1000,
            "total_p99_ms": percentile(self.total_s, 99) * 1000,
            "mean_total_ms": (statistics.fmean(self.total_s) * 1000) if self.total_s else float("nan"),
            "requests": len(self.total_s),
            "errors": self.errors,
        }


# One request: returns (time to first token, total) in seconds.
Request = Callable[[int], Awaitable[tuple[float, float]]]


def deadline_after(seconds: float) -> Callable[[], bool]:
    stop_at = time.monotonic() + seconds
    return lambda: time.monotonic() >= stop_at


async def closed_loop(request: Request, *, concurrency: int, until: Callable[[], bool]) -> tuple[LatencySample, float]:
    """`concurrency` callers, each sending the next request when the last
    ends, until `until()` holds (see deadline_after). Returns latencies and
    completed requests/s."""
    sample = LatencySample()
    counter = iter(range(10**9))

    async def caller() -> None:
        while not until():
            try:
                ttft, total = await request(next(counter))
            except Exception:
                sample.errors += 1
                continue
            sample.ttft_s.append(ttft)
            sample.total_s.append(total)

    started = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    return sample, len(sample.total_s) / elapsed


def write_results(name: str, results: dict[str, Any], table: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    results = {
        **results,
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS_DIR / f"{name}.md").write_text(table + "\n")
    print(table)
    print(f"\nwritten: {path}")
    return path


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
