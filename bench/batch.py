"""make bench-batch: a batch job through the queue against the same rows
run directly on the engine, and what a running batch does to online latency.

Both paths use one engine, so the comparison is not between two engine
starts: the worker runs in this process (its gRPC server, load reports and
engine, as `python -m services.worker` builds them), the rest of the mesh
as processes (scheduler, router, cache, a private Redis) and the batch
consumer as its own process beside the worker, as `headrace up` runs it.

    offline      the job's rows, parsed exactly as the scheduler parses
                 them, fed straight to the worker's engine in-process, as
                 many at a time as it runs at once (its capacity, plus the
                 few the consumer lets queue)
    queue        the same rows as a job: SubmitBatch -> Celery chunk tasks
                 -> consumer -> worker.Generate, timed from submit until its
                 results stream ends
    offline      again: the queue run sits between two offline runs, so a
                 machine that gets busier or quieter shows, and the ratio
                 is against their mean
    online       a few callers send short interactive requests: alone, then
                 while the job runs once more
    arrivals     the case that found issue 11: the job first, and once it
                 holds every slot, online requests arriving one at a time
                 (every --arrival-gap-s); their queue wait at the scheduler
                 and TTFT, against the same arrivals with no batch running,
                 and against one batch row's duration

Every row and online request decodes exactly --max-tokens tokens
(ignore_eos), so the paths do the same work. Engines: vllm (the real model;
needs `headrace models prepare`) or synthetic (no model: the queue's own
cost). Results: bench/results/batch-<engine>.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc.aio
import redis

from bench.harness import (
    LatencySample,
    closed_loop,
    deadline_after,
    markdown_table,
    percentile,
    process_cpu_s,
    process_group_cpu_s,
    process_group_rss_mib,
    running_mesh,
    write_results,
)
from headrace.batch.input_rows import parse_input
from headrace.batch.model_choice import resolve_batch_model
from headrace.batch.queue import consumer_heartbeat_key, consumer_name
from headrace.local.redis_server import free_port
from headrace.runtime.config import Settings, embedded_pool_scheduling
from headrace.runtime.gc_policy import freeze_startup_heap
from headrace.v1 import batch_pb2, generation_pb2, router_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, worker_pb2
from services.worker.__main__ import WorkerApp, build_worker, start_worker
from services.worker.convert import generation_request_from_proto

POOL = "smollm2"
ENGINES: dict[str, dict[str, Any]] = {
    "vllm": {"kind": "vllm", "max_num_seqs": 64, "cpu_kv_cache_gib": 2},
    # Paced like one stream of a small model on a CPU; capacity as vllm's.
    "synthetic": {"kind": "synthetic", "ttft_ms": 50, "tokens_per_s": 40, "max_concurrency": 64},
}
# Warm-up rows: the engine at full width before anything is measured.
WARM_ROWS = 64


def mesh_config(
    engine: str,
    batch: dict[str, Any] | None = None,
    scheduling: dict[str, Any] | None = None,
    engine_settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    # No worker processes: the worker runs in this process (see above).
    return {
        "pools": {POOL: {"engine": {**ENGINES[engine], **(engine_settings or {})}, "workers": 0}},
        "telemetry": {"log_level": "WARNING"},
        "batch": batch or {},
        "scheduler": {"pools": {POOL: scheduling or {}}},
    }


def input_file(rows: int, max_tokens: int, *, prefix: str = "r") -> bytes:
    lines = []
    for i in range(rows):
        body = {
            "model": POOL,
            "messages": [{"role": "user", "content": f"Describe river number {i} in one line."}],
            "max_tokens": max_tokens,
            "temperature": 0,
            # Every row decodes the same length, on every path.
            "ignore_eos": True,
        }
        line = {"custom_id": f"{prefix}{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        lines.append(json.dumps(line))
    return ("\n".join(lines) + "\n").encode()


class CpuMeter:
    """CPU seconds per process group, per phase; `within` names processes
    whose share of a group is shown apart (and taken out of the group's)."""

    def __init__(self, groups: dict[str, int], within: dict[str, tuple[str, int]] | None = None) -> None:
        self._groups = groups
        self._within = within or {}
        self._last = self._read()
        self.phases: dict[str, dict[str, float]] = {}

    def _read(self) -> dict[str, float]:
        used = {name: process_group_cpu_s(pgid) for name, pgid in self._groups.items()}
        for name, (group, pid) in self._within.items():
            used[name] = process_cpu_s(pid)
            used[group] -= used[name]
        return used

    def mark(self, phase: str) -> None:
        now = self._read()
        self.phases[phase] = {name: round(max(0.0, now[name] - self._last[name]), 1) for name in now}
        self._last = now


@dataclass
class Throughput:
    rows: int
    tokens: int
    wall_s: float
    load_average: float = 0.0
    # Median time one row took at the worker (through the queue only).
    row_ms_p50: float = 0.0
    # When the first row's answer came, from the start: what the path costs
    # before the engine's first row ends (submission, queue, first lease).
    first_row_s: float = 0.0
    # When the last row's answer came (the rest of wall_s is the job's end).
    last_row_s: float = 0.0
    # Sequences the engine ran at once, on average over the phase (sampled).
    mean_running: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    def as_dict(self) -> dict[str, float]:
        return {**vars(self), "rows_per_s": self.rows_per_s, "tokens_per_s": self.tokens_per_s}


class Occupancy:
    """How full the engine kept, sampled every 20 ms while a phase runs."""

    def __init__(self, worker: WorkerApp) -> None:
        self._worker = worker
        self._samples: list[int] = []
        self.waiting: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            stats = self._worker.engine.stats()
            self._samples.append(stats.running)
            self.waiting.append(stats.waiting)
            await asyncio.sleep(0.02)

    def __enter__(self) -> Occupancy:
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    @property
    def mean_running(self) -> float:
        return statistics.fmean(self._samples) if self._samples else 0.0


def parsed_requests(settings: Settings, data: bytes) -> list[generation_pb2.GenerateRequest]:
    parsed = parse_input(
        data,
        endpoint="/v1/chat/completions",
        limits=settings.limits,
        max_rows=settings.batch.max_rows_per_batch,
        resolve_model=lambda name, task: resolve_batch_model(settings, name, task=task),
    )
    assert not parsed.errors, parsed.errors[:3]
    return [row.request for row in parsed.rows if isinstance(row.request, generation_pb2.GenerateRequest)]


async def run_offline(
    worker: WorkerApp, requests: list[generation_pb2.GenerateRequest], *, concurrency: int
) -> Throughput:
    """The rows straight into the engine, `concurrency` at a time (as many
    as it runs at once: handing vLLM's AsyncLLM thousands at once costs it
    more in bookkeeping than it gains)."""
    slots = asyncio.Semaphore(concurrency)

    async def run(index: int, request: generation_pb2.GenerateRequest) -> int:
        async with slots:
            return await run_one(index, request)

    async def run_one(index: int, request: generation_pb2.GenerateRequest) -> int:
        generation = generation_request_from_proto(
            worker_pb2.WorkerGenerateRequest(
                request_id=f"offline-{index}-{time.monotonic_ns()}",
                model_version=request.model,
                request=request,
                priority=generation_pb2.PRIORITY_BATCH,
            )
        )
        tokens = 0
        async for delta in worker.engine.generate(generation):
            if delta.finish_reason is not None:
                tokens = delta.completion_tokens
        return tokens

    started = time.monotonic()
    first_row_s = 0.0

    async def timed(index: int, request: generation_pb2.GenerateRequest) -> int:
        nonlocal first_row_s
        tokens = await run(index, request)
        first_row_s = first_row_s or time.monotonic() - started
        return tokens

    tokens = await asyncio.gather(*(timed(i, request) for i, request in enumerate(requests)))
    wall = time.monotonic() - started
    return Throughput(
        rows=len(tokens), tokens=sum(tokens), wall_s=wall, load_average=os.getloadavg()[0], first_row_s=first_row_s
    )


async def run_job(router: router_pb2_grpc.RouterStub, data: bytes) -> tuple[Throughput, batch_pb2.BatchJob]:
    """Submit, then follow the results until the job ends."""
    started = time.monotonic()
    job = await router.SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=data, endpoint="/v1/chat/completions"))
    if job.status == batch_pb2.BATCH_STATUS_FAILED:
        raise RuntimeError(f"the job failed validation: {list(job.errors)[:3]}")
    rows = tokens = 0
    row_s: list[float] = []
    first_row_s = last_row_s = 0.0
    async for result in router.StreamBatchResults(batch_pb2.StreamBatchResultsRequest(batch_id=job.id, follow=True)):
        if not rows:
            first_row_s = time.monotonic() - started
        rows += 1
        last_row_s = time.monotonic() - started
        tokens += result.response.usage.completion_tokens
        row_s.append(result.response.timing.total_ms / 1000.0)
    wall = time.monotonic() - started
    done = await router.GetBatch(batch_pb2.GetBatchRequest(batch_id=job.id))
    throughput = Throughput(
        rows=rows,
        tokens=tokens,
        wall_s=wall,
        load_average=os.getloadavg()[0],
        row_ms_p50=percentile(row_s, 50) * 1000,
        first_row_s=first_row_s,
        last_row_s=last_row_s,
    )
    return throughput, done


def online_request(index: int, max_tokens: int) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        prompt=f"Online question {index}: name a river.",
        sampling=generation_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True),
        priority=generation_pb2.PRIORITY_INTERACTIVE,
        cache=generation_pb2.CachePolicy(no_cache=True, no_store=True),
    )


async def online_load(
    router: router_pb2_grpc.RouterStub, *, callers: int, max_tokens: int, until: Callable[[], bool]
) -> LatencySample:
    """`callers` closed loops of streamed requests until `until()` holds."""

    async def one(index: int) -> tuple[float, float]:
        started = time.perf_counter()
        ttft = 0.0
        async for chunk in router.GenerateStream(online_request(index, max_tokens)):
            if not ttft and chunk.text:
                ttft = time.perf_counter() - started
        return ttft, time.perf_counter() - started

    sample, _rate = await closed_loop(one, concurrency=callers, until=until)
    return sample


@dataclass
class Arrivals:
    """Online requests arriving one at a time: their queue wait at the
    scheduler, time to first token and total, in seconds."""

    queue_s: list[float]
    sample: LatencySample
    # (arrival index, TTFT s): which arrivals were slow.
    by_arrival: list[tuple[int, float]] = field(default_factory=list)

    def slowest(self, count: int = 3) -> list[tuple[int, float]]:
        return sorted(self.by_arrival, key=lambda item: -item[1])[:count]

    def summary_ms(self) -> dict[str, float]:
        return {
            **self.sample.summary_ms(),
            "queue_p50_ms": percentile(self.queue_s, 50) * 1000,
            "queue_p99_ms": percentile(self.queue_s, 99) * 1000,
        }


async def online_arrivals(
    router: router_pb2_grpc.RouterStub, *, gap_s: float, max_tokens: int, until: Callable[[], bool]
) -> Arrivals:
    """One online request every gap_s (open loop: each arrives whether or
    not the last has ended), until `until()` holds."""
    arrivals = Arrivals(queue_s=[], sample=LatencySample())

    async def one(index: int) -> None:
        started = time.perf_counter()
        ttft = 0.0
        try:
            async for chunk in router.GenerateStream(online_request(index, max_tokens)):
                if not ttft and chunk.text:
                    ttft = time.perf_counter() - started
                if chunk.HasField("timing") and chunk.timing.total_ms:
                    arrivals.queue_s.append(chunk.timing.queue_ms / 1000.0)
        except grpc.aio.AioRpcError:
            arrivals.sample.errors += 1
            return
        arrivals.sample.ttft_s.append(ttft)
        arrivals.sample.total_s.append(time.perf_counter() - started)
        arrivals.by_arrival.append((index, ttft))

    tasks = []
    index = 0
    while not until():
        tasks.append(asyncio.create_task(one(index)))
        index += 1
        await asyncio.sleep(gap_s)
    await asyncio.gather(*tasks)
    return arrivals


async def pool_full(scheduler: scheduler_pb2_grpc.SchedulerStub, *, timeout_s: float = 120.0) -> None:
    """Wait until the pool's leases fill its capacity (the batch holds it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = await scheduler.GetPoolStatus(scheduler_pb2.GetPoolStatusRequest(pool=POOL))
        pool = status.pools[0] if status.pools else None
        if pool is not None and pool.capacity and pool.leased >= pool.capacity:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the batch never filled the pool")


async def batch_then_online(
    router: router_pb2_grpc.RouterStub,
    scheduler: scheduler_pb2_grpc.SchedulerStub,
    data: bytes,
    *,
    gap_s: float,
    max_tokens: int,
) -> tuple[Throughput, batch_pb2.BatchJob, Arrivals]:
    """The job first; once it holds every slot, online arrivals until it ends."""
    finished = asyncio.Event()

    async def tracked() -> tuple[Throughput, batch_pb2.BatchJob]:
        try:
            return await run_job(router, data)
        finally:
            finished.set()

    job = asyncio.create_task(tracked())
    await pool_full(scheduler)
    arrivals = await online_arrivals(router, gap_s=gap_s, max_tokens=max_tokens, until=finished.is_set)
    throughput, done = await job
    return throughput, done, arrivals


Load = Callable[[Callable[[], bool]], Awaitable[LatencySample]]


async def while_running(
    job: Awaitable[tuple[Throughput, batch_pb2.BatchJob]], load: Load
) -> tuple[Throughput, batch_pb2.BatchJob, LatencySample]:
    """Run the job, and the online load until the job ends."""
    finished = asyncio.Event()

    async def tracked() -> tuple[Throughput, batch_pb2.BatchJob]:
        try:
            return await job
        finally:
            finished.set()

    outcome, sample = await asyncio.gather(tracked(), load(finished.is_set))
    return outcome[0], outcome[1], sample


class Consumer:
    """The batch consumer beside the worker, as its own process."""

    def __init__(self, settings: Settings, worker_address: str, log_path: Path) -> None:
        self._settings = settings
        self.name = consumer_name(POOL, 0)
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.worker.consumer", "--pool", POOL, "--worker", worker_address],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        with redis.Redis.from_url(self._settings.redis_url) as client:
            while not client.exists(consumer_heartbeat_key(self._settings, self.name)):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the batch consumer did not start")
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def key_values(pairs: list[str]) -> dict[str, str]:
    """KEY=VALUE flags as a dict (pydantic converts the values)."""
    return dict(pair.split("=", 1) for pair in pairs)


async def run(args: argparse.Namespace) -> None:
    batch = key_values(args.batch)
    # vLLM: the embedded default's CPU pool scheduling, as `headrace up`
    # runs it (this benchmark names its own pool, which would otherwise take
    # the field defaults); --scheduling overrides it.
    embedded = embedded_pool_scheduling().model_dump(exclude_unset=True) if args.engine == "vllm" else {}
    scheduling = {**embedded, **key_values(args.scheduling)}
    engine_settings = key_values(args.engine_setting)
    data = input_file(args.rows, args.max_tokens)
    with running_mesh(mesh_config(args.engine, batch, scheduling, engine_settings)) as mesh:
        settings = mesh.settings
        worker = build_worker(
            settings, pool=POOL, index=0, port=free_port(), scheduler_targets=[mesh.scheduler_address]
        )
        print(f"starting the {worker.engine.kind} engine", flush=True)
        port = await start_worker(worker)
        # As a worker process does once it serves (headrace/runtime/server.py).
        freeze_startup_heap()
        consumer = Consumer(settings, f"127.0.0.1:{port}", Path(settings.state_dir) / "logs" / "consumer.log")
        try:
            await consumer.wait_ready()
            cpu = CpuMeter(
                {
                    **{p.name: p.pid for p in mesh.processes},
                    "batch consumer": consumer.process.pid,
                    # This process group: the worker and the load generator (this
                    # process), its engine's processes, Redis; shown apart.
                    "engine processes": os.getpgid(0),
                },
                within={
                    "worker + bench (this process)": ("engine processes", os.getpid()),
                    **({"redis": ("engine processes", mesh.redis_pid)} if mesh.redis_pid else {}),
                },
            )
            async with (
                grpc.aio.insecure_channel(mesh.router_address) as channel,
                grpc.aio.insecure_channel(mesh.scheduler_address) as scheduler_channel,
            ):
                router = router_pb2_grpc.RouterStub(channel)
                scheduler = scheduler_pb2_grpc.SchedulerStub(scheduler_channel)
                results = await measure(args, settings, worker, router, scheduler, data, cpu)
            results["cpu"] = cpu.phases
            rss = {**mesh.rss_mib(), "worker (this process)": process_group_rss_mib(os.getpgid(0))}
            rss["batch consumer"] = process_group_rss_mib(consumer.process.pid)
        finally:
            consumer.stop()
            await worker.host.stop(1.0)
            await worker.close()
    if args.throughput_only:
        report_throughput(results)
        return
    if args.arrivals_only:
        report_arrivals(results)
        return
    settings_used = {
        **batch,
        **{f"scheduler.{k}": v for k, v in scheduling.items()},
        **{f"engine.{k}": v for k, v in engine_settings.items()},
    }
    report(args, settings_used, results, rss)


async def measure(
    args: argparse.Namespace,
    settings: Settings,
    worker: WorkerApp,
    router: router_pb2_grpc.RouterStub,
    scheduler: scheduler_pb2_grpc.SchedulerStub,
    data: bytes,
    cpu: CpuMeter,
) -> dict[str, Any]:
    requests = parsed_requests(settings, data)

    def arrivals(until: Callable[[], bool]) -> Awaitable[Arrivals]:
        return online_arrivals(router, gap_s=args.arrival_gap_s, max_tokens=args.max_tokens, until=until)

    def load(until: Callable[[], bool]) -> Awaitable[LatencySample]:
        return online_load(router, callers=args.online_callers, max_tokens=args.max_tokens, until=until)

    # As many rows in flight as the scheduler leases at once: the engine's
    # width, and the few more the pool lets queue in it.
    concurrency = worker.engine.stats().capacity + settings.scheduler.for_pool(POOL).engine_queue_slots
    # Warm every path at full width (engine, channels, consumer, router).
    await run_offline(worker, requests[:WARM_ROWS], concurrency=concurrency)
    await run_job(router, input_file(WARM_ROWS, args.max_tokens, prefix="warm"))
    await load(deadline_after(2.0))
    cpu.mark("warm-up")

    if args.throughput_only:
        return await throughput_rounds(args, worker, router, requests, data, concurrency, cpu)
    if args.arrivals_only:
        return await arrival_rounds(args, router, scheduler, arrivals, cpu)
    with Occupancy(worker) as occupancy:
        first = await run_offline(worker, requests, concurrency=concurrency)
    first.mean_running = occupancy.mean_running
    cpu.mark("offline")
    print(f"offline: {first.rows_per_s:.2f} rows/s (load {first.load_average:.1f})", flush=True)
    with Occupancy(worker) as occupancy:
        queued, job = await run_job(router, data)
    queued.mean_running = occupancy.mean_running
    cpu.mark("through the queue")
    print(f"queue: {queued.rows_per_s:.2f} rows/s (load {queued.load_average:.1f})", flush=True)
    with Occupancy(worker) as occupancy:
        second = await run_offline(worker, requests, concurrency=concurrency)
    second.mean_running = occupancy.mean_running
    cpu.mark("offline again")
    print(f"offline again: {second.rows_per_s:.2f} rows/s (load {second.load_average:.1f})", flush=True)
    alone = await load(deadline_after(args.online_seconds))
    cpu.mark("online alone")
    print(f"online alone: {len(alone.total_s)} requests", flush=True)
    with Occupancy(worker) as occupancy:
        mixed, mixed_job, during = await while_running(run_job(router, data), load)
    mixed.mean_running = occupancy.mean_running
    cpu.mark("queue + online")
    print(f"queue with online load: {mixed.rows_per_s:.2f} rows/s", flush=True)
    arrivals_alone = await arrivals(deadline_after(args.online_seconds))
    cpu.mark("arrivals alone")
    first_job, first_done, arrivals_during = await batch_then_online(
        router, scheduler, data, gap_s=args.arrival_gap_s, max_tokens=args.max_tokens
    )
    cpu.mark("batch first, then arrivals")
    print(
        f"batch first, then {len(arrivals_during.queue_s)} arrivals: queue p99 "
        f"{percentile(arrivals_during.queue_s, 99) * 1000:.0f} ms (a row: {first_job.row_ms_p50:.0f} ms)",
        flush=True,
    )
    return {
        "arrivals_alone": arrivals_alone,
        "arrivals_during": arrivals_during,
        "first_job": first_job,
        "first_done": first_done,
        "offline": [first, second],
        "queue": queued,
        "job": job,
        "mixed": mixed,
        "mixed_job": mixed_job,
        "alone": alone,
        "during": during,
    }


async def throughput_rounds(
    args: argparse.Namespace,
    worker: WorkerApp,
    router: router_pb2_grpc.RouterStub,
    requests: list[generation_pb2.GenerateRequest],
    data: bytes,
    concurrency: int,
    cpu: CpuMeter,
) -> dict[str, Any]:
    """--throughput-only: offline and through the queue, alternating
    (offline, queue, offline, ...), `--rounds` queue runs; no online phases."""
    offline: list[Throughput] = []
    queued: list[Throughput] = []
    for round_index in range(args.rounds + 1):
        with Occupancy(worker) as occupancy:
            alone = await run_offline(worker, requests, concurrency=concurrency)
        alone.mean_running = occupancy.mean_running
        offline.append(alone)
        cpu.mark(f"offline {round_index + 1}")
        print(f"offline: {alone.rows_per_s:.2f} rows/s (load {alone.load_average:.1f})", flush=True)
        if round_index == args.rounds:
            break
        with Occupancy(worker) as occupancy:
            through, _job = await run_job(router, data)
        through.mean_running = occupancy.mean_running
        queued.append(through)
        cpu.mark(f"queue {round_index + 1}")
        print(f"queue: {through.rows_per_s:.2f} rows/s (load {through.load_average:.1f})", flush=True)
    return {"offline_runs": offline, "queue_runs": queued}


async def arrival_rounds(
    args: argparse.Namespace,
    router: router_pb2_grpc.RouterStub,
    scheduler: scheduler_pb2_grpc.SchedulerStub,
    arrivals: Callable[[Callable[[], bool]], Awaitable[Arrivals]],
    cpu: CpuMeter,
) -> dict[str, Any]:
    """--arrivals-only: arrivals alone, then the job first and arrivals
    while it runs, `--rounds` times; the job is --arrival-rows rows (the
    whole --rows job at the batch's share takes minutes on vLLM)."""
    data = input_file(args.arrival_rows, args.max_tokens, prefix="arrivals")
    alone_runs: list[Arrivals] = []
    during_runs: list[Arrivals] = []
    for round_index in range(args.rounds):
        alone_runs.append(await arrivals(deadline_after(args.online_seconds)))
        cpu.mark(f"arrivals alone {round_index + 1}")
        job, _done, during = await batch_then_online(
            router, scheduler, data, gap_s=args.arrival_gap_s, max_tokens=args.max_tokens
        )
        during_runs.append(during)
        cpu.mark(f"batch first, then arrivals {round_index + 1}")
        print(f"round {round_index + 1}: the job at {job.rows_per_s:.2f} rows/s beside the arrivals", flush=True)
    return {"arrivals_alone_runs": alone_runs, "arrivals_during_runs": during_runs}


def report_arrivals(results: dict[str, Any]) -> None:
    """--arrivals-only: TTFT of arrivals with the job first against alone,
    per round, and the slowest arrivals (index in arrival order: the
    first ones meet the job's full width)."""
    for index, (alone, during) in enumerate(
        zip(results["arrivals_alone_runs"], results["arrivals_during_runs"], strict=True)
    ):
        a, d = alone.summary_ms(), during.summary_ms()
        print(
            f"round {index + 1}: TTFT p50 {d['ttft_p50_ms']:.0f} vs {a['ttft_p50_ms']:.0f} ms alone, "
            f"p99 {d['ttft_p99_ms']:.0f} vs {a['ttft_p99_ms']:.0f} ms ({d['ttft_p99_ms'] / a['ttft_p99_ms']:.2f}x), "
            f"{d['requests']} arrivals, {d['errors']} errors; queue p99 {d['queue_p99_ms']:.2f} ms"
        )
        slow = ", ".join(f"#{i} {ttft * 1000:.0f} ms" for i, ttft in during.slowest(5))
        first = ", ".join(f"{ttft * 1000:.0f}" for _i, ttft in sorted(during.by_arrival)[:6])
        print(f"  slowest with the job: {slow}; the first six in order: {first} ms")
        slow_alone = ", ".join(f"#{i} {ttft * 1000:.0f} ms" for i, ttft in alone.slowest(3))
        print(f"  slowest alone: {slow_alone}")
    print(cpu_table(results["cpu"]))


def report_throughput(results: dict[str, Any]) -> None:
    """--throughput-only: each queue run against the offline runs on either
    side of it, and CPU per phase (printed; results files untouched)."""
    offline: list[Throughput] = results["offline_runs"]
    queued: list[Throughput] = results["queue_runs"]
    ratios = []
    for index, through in enumerate(queued):
        around = (offline[index].rows_per_s + offline[index + 1].rows_per_s) / 2
        ratios.append(through.rows_per_s / around)
        print(f"queue run {index + 1}: {through.rows_per_s:.2f} rows/s, {ratios[-1]:.1%} of offline")
    print(f"mean: {sum(ratios) / len(ratios):.1%} of offline over {len(ratios)} runs")
    print(cpu_table(results["cpu"]))


def cpu_table(phases: dict[str, dict[str, float]]) -> str:
    """CPU seconds per phase (rows) and process group (columns)."""
    rows = [[phase, *used.values()] for phase, used in phases.items()]
    return markdown_table(["phase", *next(iter(phases.values()))], rows)


def report(args: argparse.Namespace, batch: dict[str, Any], results: dict[str, Any], rss: dict[str, float]) -> None:
    first, second = results["offline"]
    queued, mixed = results["queue"], results["mixed"]
    job, mixed_job = results["job"], results["mixed_job"]
    alone, during = results["alone"], results["during"]
    offline_rate = (first.rows_per_s + second.rows_per_s) / 2
    ratio = queued.rows_per_s / offline_rate

    def row(name: str, t: Throughput) -> list[Any]:
        return [
            name,
            t.rows,
            t.wall_s,
            t.first_row_s,
            t.last_row_s or t.wall_s,
            t.mean_running,
            t.rows_per_s,
            t.tokens_per_s,
            t.load_average,
        ]

    throughput_rows = [
        row("offline: engine in-process", first),
        row("through the queue", queued),
        row("offline again", second),
        row("through the queue, online load too", mixed),
    ]
    latency_rows = []
    for name, sample in (("online alone", alone), ("online while the batch runs", during)):
        s = sample.summary_ms()
        latency_rows.append(
            [name, s["requests"], s["ttft_p50_ms"], s["ttft_p99_ms"], s["total_p50_ms"], s["total_p99_ms"], s["errors"]]
        )
    p99_alone = percentile(alone.total_s, 99) * 1000
    p99_during = percentile(during.total_s, 99) * 1000
    failed = job.request_counts.failed + mixed_job.request_counts.failed + results["first_done"].request_counts.failed
    first_job: Throughput = results["first_job"]
    arrivals_alone: Arrivals = results["arrivals_alone"]
    arrivals_during: Arrivals = results["arrivals_during"]
    arrival_rows = []
    for name, arrivals in (("alone", arrivals_alone), ("the batch first, holding every slot", arrivals_during)):
        a = arrivals.summary_ms()
        arrival_rows.append(
            [
                name,
                a["requests"],
                a["queue_p50_ms"],
                a["queue_p99_ms"],
                a["ttft_p50_ms"],
                a["ttft_p99_ms"],
                a["total_p99_ms"],
                a["errors"],
            ]
        )
    ttft_ratio = arrivals_during.summary_ms()["ttft_p99_ms"] / arrivals_alone.summary_ms()["ttft_p99_ms"]
    table = "\n".join(
        [
            f"## Batch through the queue vs offline ({args.engine} engine, {args.rows} rows of "
            f"{args.max_tokens} tokens)",
            "",
            markdown_table(
                [
                    "path",
                    "rows",
                    "wall s",
                    "first row after s",
                    "last row after s",
                    "engine running (mean)",
                    "rows/s",
                    "tokens/s",
                    "load avg at end",
                ],
                throughput_rows,
            ),
            "",
            f"Throughput through the queue is {ratio:.1%} of offline (the mean of the runs before and after it; "
            f"goal >= 95%). Jobs: {job.request_counts.completed} and {mixed_job.request_counts.completed} rows "
            f"completed, {failed} failed.",
            "",
            f"### Online requests ({args.online_callers} callers, {args.max_tokens} tokens, interactive priority)",
            "",
            markdown_table(
                ["online", "requests", "ttft p50 ms", "ttft p99 ms", "total p50 ms", "total p99 ms", "errors"],
                latency_rows,
            ),
            "",
            f"Online p99 while the batch runs: {p99_during:.0f} ms vs {p99_alone:.0f} ms alone "
            f"({p99_during / p99_alone:.2f}x).",
            "",
            f"### Batch first, then online arrivals (one every {args.arrival_gap_s:g} s, interactive)",
            "",
            "The job starts alone and takes every slot; then online requests arrive one at a time until it ends "
            "(the case of issue 11). Queue: the wait for a slot at the scheduler.",
            "",
            markdown_table(
                [
                    "online arrivals",
                    "requests",
                    "queue p50 ms",
                    "queue p99 ms",
                    "ttft p50 ms",
                    "ttft p99 ms",
                    "total p99 ms",
                    "errors",
                ],
                arrival_rows,
            ),
            "",
            f"Queue wait p99 {arrivals_during.summary_ms()['queue_p99_ms']:.0f} ms against one batch row's "
            f"{first_job.row_ms_p50:.0f} ms (median; goal: at most one row); TTFT p99 {ttft_ratio:.2f}x alone "
            f"(goal on vLLM <= 1.5x). The job meanwhile: {first_job.rows_per_s:.2f} rows/s.",
            "",
            "CPU seconds per phase (2 cores: at most 2 s per second of wall time):",
            "",
            cpu_table(results["cpu"]),
            "",
            markdown_table(["service", "RSS MiB"], [[name, mib] for name, mib in rss.items()]),
            "",
            f"{os.cpu_count()} cores, shared with whatever else runs on the machine (see the load averages). "
            f"Batch settings: {json.dumps(batch) if batch else 'defaults'}.",
        ]
    )
    write_results(
        f"batch-{args.engine}",
        {
            "engine": args.engine,
            "rows": args.rows,
            "max_tokens": args.max_tokens,
            "offline": [first.as_dict(), second.as_dict()],
            "queue": queued.as_dict(),
            "queue_with_online": mixed.as_dict(),
            "throughput_ratio": ratio,
            "online_callers": args.online_callers,
            "online_alone": alone.summary_ms(),
            "online_during_batch": during.summary_ms(),
            "arrival_gap_s": args.arrival_gap_s,
            "arrivals_alone": arrivals_alone.summary_ms(),
            "arrivals_after_batch": arrivals_during.summary_ms(),
            "arrivals_ttft_p99_ratio": ttft_ratio,
            "batch_row_ms_p50": first_job.row_ms_p50,
            "rss_mib": rss,
            "cpu_seconds": results["cpu"],
            "batch_settings": batch,
        },
        table,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=sorted(ENGINES), default="vllm")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--online-callers", type=int, default=2)
    parser.add_argument("--online-seconds", type=float, default=20.0, help="online alone, for the baseline")
    parser.add_argument(
        "--batch", action="append", default=[], metavar="KEY=VALUE", help="a batch setting for the mesh (repeatable)"
    )
    parser.add_argument(
        "--scheduling",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=(
            "a scheduler setting for the pool, e.g. online_preempts_batch=false (repeatable); vLLM starts from "
            "the embedded CPU pool's (config.embedded_pool_scheduling), the synthetic engine from the field defaults"
        ),
    )
    parser.add_argument(
        "--engine-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an engine setting for the pool, e.g. max_num_batched_tokens=256 (repeatable)",
    )
    parser.add_argument(
        "--throughput-only",
        action="store_true",
        help="only offline vs through the queue, alternating; print, do not write results",
    )
    parser.add_argument(
        "--arrivals-only",
        action="store_true",
        help="only arrivals alone vs with the job first, alternating; print, do not write results",
    )
    parser.add_argument("--rounds", type=int, default=2, help="queue runs with --throughput-only or --arrivals-only")
    parser.add_argument("--arrival-rows", type=int, default=400, help="the job's rows with --arrivals-only")
    parser.add_argument("--arrival-gap-s", type=float, default=0.5, help="between online arrivals (batch-first case)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    asyncio.run(run(args))


if __name__ == "__main__":
    # Guarded: vLLM spawns processes that re-import __main__.
    main()
