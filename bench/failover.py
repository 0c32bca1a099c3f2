"""make bench-failover: kill -9 one scheduler replica under load.

The mesh runs as `headrace up` runs it (LocalMesh), with
`scheduler: {replicas: 2}`, two synthetic workers of `max_concurrency`
slots each and closed-loop load through the router at twice the pool's
slots, so every slot is always taken and requests queue in both replicas.
After a warm-up, replica 0 is killed with SIGKILL; the load goes on.

Measured:
- requests lost: every request the router answered with an error (must be
  0: a Place queued on the dead replica fails UNAVAILABLE and the router
  places it on the survivor before any token is sent);
- extra slots: the most sequences any worker held beyond its capacity
  (running + waiting - capacity, sampled every 20 ms from the worker's
  GetLoad), summed over workers, before and after the kill;
- time to the survivor's first grant after the kill (a request that
  started after the kill and completed), and time to recover: until the
  survivors lease the whole pool (their ListWorkers lease counts add up to
  the pool's slots: they hold the dead replica's share as well as theirs).

Runs with 2 and 3 replicas (one mesh each, `--replicas 2,3`): with 3,
two survivors split the dead share and can over-book by what the reports
do not show yet, within the bound docs/scheduler.md derives.

Everything runs on this machine, shared with other work, so times include
its load; the replica TTL is the config's (1.0 s here).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from bench.harness import MeshUnderTest, markdown_table, percentile, running_mesh, write_results
from headrace.local.mesh import LocalMesh
from headrace.local.redis_server import free_port_run
from headrace.v1 import generation_pb2, router_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, worker_pb2, worker_pb2_grpc

POOL = "gen"
REPLICAS = 2
WORKERS = 2
SLOTS = 4
MAX_TOKENS = 12
TOKENS_PER_S = 60.0
REPLICA_TTL_S = 1.0
REPORT_INTERVAL_MS = 100


def mesh_config(replicas: int = REPLICAS) -> dict[str, Any]:
    # One run of free ports for the replicas and the workers together: ports
    # picked apart, before anything binds them, could overlap.
    base = free_port_run(replicas + WORKERS)
    return {
        "pools": {
            POOL: {
                "workers": WORKERS,
                "engine": {
                    "kind": "synthetic",
                    "ttft_ms": 5,
                    "tokens_per_s": TOKENS_PER_S,
                    "max_concurrency": SLOTS,
                },
            }
        },
        "models": {"gen": {"default_version": "1", "versions": {"1": {"pool": POOL}}}},
        "default_model": "gen",
        "default_embedding_model": "",
        "cache": {"semantic": {"enabled": False}},
        "scheduler": {
            "replicas": replicas,
            "port": base,
            "metrics_port": None,
            "report_interval_ms": REPORT_INTERVAL_MS,
            "replica_ttl_s": REPLICA_TTL_S,
            "worker_stale_after_s": 3.0,
        },
        "worker": {"base_port": base + replicas, "metrics_port_offset": None},
    }


@dataclass
class FailoverResult:
    replicas: int = REPLICAS
    requests: int = 0
    lost: int = 0
    lost_by_status: dict[str, int] = field(default_factory=dict)
    started_after_kill_ok: int = 0
    extra_slots_before_kill: int = 0
    extra_slots_after_kill: int = 0
    # Seconds from the kill.
    first_grant_after_kill_s: float | None = None
    recovered_s: float | None = None
    # Leases the survivors held together (at most), and the pool's slots.
    survivor_leases_max: int = 0
    pool_slots: int = WORKERS * SLOTS
    # The stated bound on extra slots after a kill: the dead share, per worker.
    extra_slots_bound: int = 0
    replica_ttl_s: float = REPLICA_TTL_S
    report_interval_ms: int = REPORT_INTERVAL_MS
    # Places the router moved to the survivor after UNAVAILABLE (its log).
    places_failed_over: int = 0
    # Completed requests/s, and the longest time without a completion.
    throughput_before: float = 0.0
    throughput_after: float = 0.0
    longest_gap_before_s: float = 0.0
    longest_gap_after_s: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    # `headrace status` for each scheduler replica after the kill.
    status_after_kill: dict[str, str] = field(default_factory=dict)


async def run_failover(mesh: MeshUnderTest, *, warmup_s: float, after_s: float, concurrency: int) -> FailoverResult:
    schedulers = [p for p in mesh.processes if p.module == "services.scheduler"]
    victim, survivors = schedulers[0], schedulers[1:]
    result = FailoverResult(replicas=len(schedulers))
    result.extra_slots_bound = WORKERS * math.ceil(SLOTS / len(schedulers))
    killed_at: float | None = None
    stop = False
    latencies: list[float] = []
    completions: list[float] = []
    errors: Counter[str] = Counter()

    async with grpc.aio.insecure_channel(mesh.router_address) as router_channel:
        router = router_pb2_grpc.RouterStub(router_channel)
        survivor_channels = [grpc.aio.insecure_channel(s.address) for s in survivors]
        survivor_stubs = [scheduler_pb2_grpc.SchedulerStub(c) for c in survivor_channels]
        worker_channels = [grpc.aio.insecure_channel(a) for a in mesh.worker_addresses()]
        workers = [worker_pb2_grpc.WorkerStub(c) for c in worker_channels]

        async def caller(index: int) -> None:
            n = 0
            while not stop:
                n += 1
                started = time.monotonic()
                request = generation_pb2.GenerateRequest(
                    prompt=f"caller {index} request {n}",
                    sampling=generation_pb2.SamplingParams(max_tokens=MAX_TOKENS),
                    cache=generation_pb2.CachePolicy(no_cache=True, no_store=True),
                )
                try:
                    await router.Generate(request, timeout=30.0)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] += 1
                    continue
                latencies.append(time.monotonic() - started)
                completions.append(time.monotonic())
                if killed_at is not None and started > killed_at:
                    result.started_after_kill_ok += 1
                    done = time.monotonic() - killed_at
                    if result.first_grant_after_kill_s is None or done < result.first_grant_after_kill_s:
                        result.first_grant_after_kill_s = done

        async def sample() -> None:
            while not stop:
                loads = await asyncio.gather(
                    *(w.GetLoad(worker_pb2.GetLoadRequest(), timeout=2.0) for w in workers), return_exceptions=True
                )
                extra = sum(
                    max(0, load.running + load.waiting - load.capacity)
                    for load in loads
                    if isinstance(load, scheduler_pb2.WorkerLoad)
                )
                if killed_at is None:
                    result.extra_slots_before_kill = max(result.extra_slots_before_kill, extra)
                else:
                    result.extra_slots_after_kill = max(result.extra_slots_after_kill, extra)
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        listings = await asyncio.gather(
                            *(
                                stub.ListWorkers(scheduler_pb2.ListWorkersRequest(pool=POOL), timeout=2.0)
                                for stub in survivor_stubs
                            )
                        )
                        leases = sum(w.leases for listing in listings for w in listing.workers)
                        result.survivor_leases_max = max(result.survivor_leases_max, leases)
                        if result.recovered_s is None and leases >= result.pool_slots:
                            result.recovered_s = time.monotonic() - killed_at
                await asyncio.sleep(0.02)

        tasks = [asyncio.create_task(caller(i)) for i in range(concurrency)]
        sampler = asyncio.create_task(sample())
        began = time.monotonic()
        await asyncio.sleep(warmup_s)
        # SIGKILL the replica's process group: no goodbye, no key deleted.
        os.killpg(victim.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.sleep(after_s)
        stop = True
        ended = time.monotonic()
        await asyncio.gather(*tasks, sampler)
        for channel in [*worker_channels, *survivor_channels]:
            await channel.close()

    states = {s.name: s.state for s in LocalMesh(mesh.settings, echo=lambda _line: None).status()}
    result.status_after_kill = {p.name: states.get(p.name, "?") for p in schedulers}
    assert killed_at is not None
    # The first second after the start is warm-up, not counted.
    before = [t for t in completions if began + 1.0 <= t < killed_at]
    after = [t for t in completions if killed_at <= t <= ended]
    result.throughput_before = len(before) / max(1e-9, killed_at - began - 1.0)
    result.throughput_after = len(after) / max(1e-9, ended - killed_at)
    result.longest_gap_before_s = _longest_gap(before, began + 1.0, killed_at)
    result.longest_gap_after_s = _longest_gap(after, killed_at, ended)
    router_log = next(p.log_path for p in mesh.processes if p.module == "services.router")
    result.places_failed_over = _failovers_logged(router_log)
    result.requests = len(latencies) + sum(errors.values())
    result.lost = sum(errors.values())
    result.lost_by_status = dict(errors)
    result.latency_p50_ms = percentile(latencies, 50) * 1000
    result.latency_p99_ms = percentile(latencies, 99) * 1000
    return result


def _longest_gap(times: list[float], start: float, end: float) -> float:
    points = [start, *sorted(times), end]
    return max(b - a for a, b in itertools.pairwise(points))


def _failovers_logged(log_path: str) -> int:
    """Place calls the router's SchedulerReplicas moved to another replica."""
    text = Path(log_path).read_text(errors="replace") if Path(log_path).exists() else ""
    return sum(1 for line in text.splitlines() if ": Place UNAVAILABLE" in line)


def table(results: list[FailoverResult]) -> str:
    def seconds(value: float | None) -> str:
        return "never" if value is None else f"{value:.2f} s"

    def row(label: str, cell: Any) -> list[str]:
        return [label, *(cell(r) for r in results)]

    rows = [
        row("requests (closed loop, 2x the pool's slots)", lambda r: str(r.requests)),
        row("requests lost", lambda r: f"{r.lost} {r.lost_by_status or ''}".strip()),
        row("requests started after the kill and served", lambda r: str(r.started_after_kill_ok)),
        row("Places the router moved to another replica", lambda r: str(r.places_failed_over)),
        row("extra slots before the kill (max, all workers)", lambda r: str(r.extra_slots_before_kill)),
        row(
            "extra slots after the kill (max, all workers; bound)",
            lambda r: f"{r.extra_slots_after_kill} (bound {r.extra_slots_bound})",
        ),
        row(
            "completed requests/s before / after the kill",
            lambda r: (
                f"{r.throughput_before:.1f} / {r.throughput_after:.1f} "
                f"({r.throughput_after / max(1e-9, r.throughput_before):.2f}x)"
            ),
        ),
        row(
            "longest time without a completion, before / after",
            lambda r: f"{r.longest_gap_before_s:.2f} / {r.longest_gap_after_s:.2f} s",
        ),
        row("first request started after the kill done", lambda r: seconds(r.first_grant_after_kill_s)),
        row("recovered: the survivors lease every slot", lambda r: seconds(r.recovered_s)),
        row("latency p50 / p99", lambda r: f"{r.latency_p50_ms:.0f} / {r.latency_p99_ms:.0f} ms"),
        row(
            "`headrace status` after the kill",
            lambda r: ", ".join(f"{k} {v}" for k, v in r.status_after_kill.items()),
        ),
    ]
    header = (
        f"Scheduler replica failover: {WORKERS} synthetic workers x {SLOTS} slots, replica_ttl_s "
        f"{REPLICA_TTL_S}, report interval {REPORT_INTERVAL_MS} ms; replica 0 killed with SIGKILL under load.\n\n"
    )
    return header + markdown_table(["", *(f"{r.replicas} replicas" for r in results)], rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.failover")
    parser.add_argument("--warmup-s", type=float, default=4.0)
    parser.add_argument("--after-s", type=float, default=8.0)
    parser.add_argument("--replicas", default="2,3", help="replica counts to run, one mesh each")
    args = parser.parse_args()
    results = []
    for replicas in (int(n) for n in args.replicas.split(",")):
        with running_mesh(mesh_config(replicas), timeout_s=300) as mesh:
            results.append(
                asyncio.run(
                    run_failover(mesh, warmup_s=args.warmup_s, after_s=args.after_s, concurrency=2 * WORKERS * SLOTS)
                )
            )
    write_results("failover", {"runs": [asdict(r) for r in results]}, table(results))


if __name__ == "__main__":
    main()
