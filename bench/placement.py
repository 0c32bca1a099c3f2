"""make bench-placement: what placement and admission buy.

Part 1, prefix affinity vs round robin (real vLLM). A shared-prefix chat
workload (many requests over a few dozen long system prompts, each
followed by a short question) runs through the router against 2 vLLM
workers serving SmolLM2-135M, each engine pinned to its own core. The
policies take turns in blocks on the same engines, in ABBA order (the
scheduler alone is restarted to switch: the machine is shared, and a
drift in its load then weighs on both alike); each block brings its own
system prompts, so none profits from another's cache. Reported side by
side: requests/s, output tokens/s, time to first token p50/p99, and the
share of prompt tokens the engines found in their prefix cache.

Part 2, 10x overload (synthetic engine, to isolate the scheduler from
model speed). Two workers with few slots; an open-loop load first at half
the pool's capacity (the baseline), then at ten times it for 60 s.
Reported: how much was admitted and rejected (and with which status),
admitted requests' TTFT and queue wait against the baseline, and the
scheduler's resident memory over the minute.

Everything runs on this machine: services, engines and the load generator
share its cores, so absolute numbers depend on what else runs here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import yaml

from bench.harness import (
    MeshUnderTest,
    markdown_table,
    percentile,
    process_group_rss_mib,
    running_mesh,
    write_results,
)
from headrace.local.mesh import LocalMesh, health_state
from headrace.local.redis_server import free_port
from headrace.runtime.service_certs import Role
from headrace.v1 import generation_pb2, router_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc

POOL = "smollm2"
PREFIX_POLICIES = ("round_robin", "prefix_affinity")
_WORDS = (
    "water wheel mill river stone grain flour sluice gate channel race pond bank current flow weir "
    "miller sack cart road village market bread oven morning evening season harvest rain spring summer "
    "winter autumn timber beam shaft gear cog axle bearing grease rope pulley hopper chute bin scale "
    "ledger price coin customer neighbour field furrow plough ox horse barn loft ladder lantern"
).split()


# --- workload -------------------------------------------------------------


def system_prompt(block: int, index: int, chars: int) -> str:
    rng = random.Random(f"system-{block}-{index}")
    words = [f"You are the assistant of mill number {index} in valley {block}. Follow these house rules."]
    length = len(words[0])
    while length < chars:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:chars]


def shared_prefix_requests(
    block: int, count: int, prompts: int, prompt_chars: int, max_tokens: int
) -> list[tuple[int, Any]]:
    """(system prompt index, request) for one block: a set of system prompts
    of its own, so no block finds another's prompts in a cache."""
    rng = random.Random(f"block-{block}")
    systems = [system_prompt(block, i, prompt_chars) for i in range(prompts)]
    result = []
    for n in range(count):
        index = rng.randrange(prompts)
        question = " ".join(rng.choice(_WORDS) for _ in range(8))
        result.append(
            (
                index,
                generation_pb2.GenerateRequest(
                    messages=[
                        generation_pb2.ChatMessage(role="system", content=systems[index]),
                        generation_pb2.ChatMessage(role="user", content=f"Question {n}: {question}?"),
                    ],
                    sampling=generation_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True),
                    cache=generation_pb2.CachePolicy(no_cache=True, no_store=True),
                ),
            )
        )
    return result


@dataclass
class Outcome:
    ttft_s: list[float] = field(default_factory=list)
    total_s: list[float] = field(default_factory=list)
    queue_ms: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    workers: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    retry_after: Counter[str] = field(default_factory=Counter)

    def record_error(self, exc: grpc.aio.AioRpcError) -> None:
        self.errors[exc.code().name] += 1
        trailing = dict(exc.trailing_metadata() or ())
        if "retry-after" in trailing:
            self.retry_after[str(trailing["retry-after"])] += 1


async def timed_stream(router: router_pb2_grpc.RouterStub, request: Any, outcome: Outcome) -> None:
    started = time.perf_counter()
    ttft: float | None = None
    last = None
    try:
        async for chunk in router.GenerateStream(request):
            if ttft is None:
                ttft = time.perf_counter() - started
                outcome.workers[chunk.route.worker_id] += 1
            last = chunk
    except grpc.aio.AioRpcError as exc:
        outcome.record_error(exc)
        return
    if ttft is None or last is None:
        outcome.errors["EMPTY"] += 1
        return
    outcome.ttft_s.append(ttft)
    outcome.total_s.append(time.perf_counter() - started)
    outcome.queue_ms.append(last.timing.queue_ms)
    outcome.prompt_tokens += last.usage.prompt_tokens
    outcome.cached_prompt_tokens += last.usage.cached_prompt_tokens
    outcome.completion_tokens += last.usage.completion_tokens


# --- worker processes pinned to a core ------------------------------------------


def memory_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


@contextlib.contextmanager
def pinned_workers(mesh: MeshUnderTest, cores: list[int], log_dir: Path) -> Any:
    """One worker process per core (vLLM binds its OpenMP threads to the
    cores its process may use), stopped with everything they spawned."""
    config = os.environ["HEADRACE_CONFIG"]
    processes: list[subprocess.Popen[bytes]] = []
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        for index, core in enumerate(cores):
            port = str(free_port())
            log = (log_dir / f"worker-{index}.log").open("wb")
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "services.worker", "--pool", POOL, "--index", str(index), "--port", port],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, "HEADRACE_CONFIG": config},
                    start_new_session=True,
                    preexec_fn=lambda core=core: os.sched_setaffinity(0, {core}),  # type: ignore[misc]
                )
            )
        yield processes
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


async def wait_for_workers(
    address: str, count: int, processes: list[subprocess.Popen[bytes]], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        while True:
            listing = await stub.ListWorkers(scheduler_pb2.ListWorkersRequest(pool=POOL))
            if sum(w.accepting for w in listing.workers) >= count:
                return
            if any(p.poll() is not None for p in processes):
                raise RuntimeError("a worker exited while starting; see its log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} workers not ready in {timeout_s:.0f}s")
            await asyncio.sleep(1.0)


# --- part 1: prefix affinity vs round robin -------------------------------------


def vllm_config(policy: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "pools": {
            POOL: {
                # The benchmark starts the workers itself, one per core.
                "workers": 0,
                "engine": {
                    "kind": "vllm",
                    "max_num_seqs": args.max_num_seqs,
                    "max_model_len": 4096,
                    "cpu_kv_cache_gib": args.kv_gib,
                }
                if args.prefix_engine == "vllm"
                else {"kind": "synthetic", "max_concurrency": args.max_num_seqs},
            }
        },
        "scheduler": {"pools": {POOL: {"policy": policy, "queue_limit": 1024}}},
        "cache": {"enabled": False},
    }


# Blocks in ABBA order: a drift in the machine's load over the run (it is
# shared) weighs on both policies alike.
BLOCK_ORDER = ("round_robin", "prefix_affinity", "prefix_affinity", "round_robin")


def switch_scheduler(mesh: MeshUnderTest, config_path: Path, log_path: Path) -> None:
    """Restart the scheduler process alone, with another policy: engines,
    workers and router stay up (workers re-register within seconds)."""
    scheduler = next(p for p in mesh.processes if p.name == "scheduler")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(scheduler.pid, signal.SIGTERM)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(scheduler.pid, 0)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.scheduler"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "HEADRACE_CONFIG": str(config_path)},
            start_new_session=True,
        )
    scheduler.pid = process.pid
    # `headrace down` (what ends running_mesh) stops the pids in the mesh's
    # state file: record the new scheduler there.
    state = LocalMesh(mesh.settings).state_path
    state.write_text(json.dumps({"processes": [asdict(p) for p in mesh.processes]}, indent=2))
    deadline = time.monotonic() + 60
    while health_state(scheduler.address, "headrace.v1.Scheduler") != "SERVING":
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the scheduler did not restart; see {log_path}")
        time.sleep(0.2)


async def until_router_places(router: router_pb2_grpc.RouterStub, timeout_s: float = 60.0) -> None:
    """The router's channel to a restarted scheduler may sit in reconnect
    backoff for a while: wait until a request goes through."""
    deadline = time.monotonic() + timeout_s
    while True:
        probe = Outcome()
        await timed_stream(
            router,
            generation_pb2.GenerateRequest(
                prompt="Probe: name a river.",
                sampling=generation_pb2.SamplingParams(max_tokens=2),
                cache=generation_pb2.CachePolicy(no_cache=True, no_store=True),
            ),
            probe,
        )
        if probe.total_s:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the router could not place a request after the scheduler restart: {probe.errors}")
        await asyncio.sleep(0.5)


def scheduler_counters(metrics_port: int) -> Counter[str]:
    """From the scheduler's Prometheus endpoint: its affinity decisions
    (home / spill / no_key) and the workers it dropped for stale reports."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("headrace_scheduler_affinity_total{"):
            labels, value = line.rsplit(" ", 1)
            outcome = re.search(r'outcome="([^"]+)"', labels)
            if outcome is not None:
                counts[outcome.group(1)] += int(float(value))
        elif line.startswith("headrace_scheduler_workers_dropped_total "):
            counts["workers_dropped"] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def unpin_worker_main_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    """Each worker started on one core, so vLLM bound its compute threads
    there. Its own process (gRPC server, load reports, detokenizing) may now
    use any core: pinned beside its engine's compute it starves, its load
    reports come late, and the scheduler drops it as stale."""
    cores = os.sched_getaffinity(0)
    for process in processes:
        os.sched_setaffinity(process.pid, cores)


def policy_configs(base_config: Path) -> dict[str, Path]:
    """The mesh's config file once per policy (the scheduler reads it)."""
    configs = {}
    for policy in PREFIX_POLICIES:
        data = yaml.safe_load(base_config.read_text())
        data["scheduler"]["pools"][POOL]["policy"] = policy
        configs[policy] = base_config.with_name(f"headrace-{policy}.yaml")
        configs[policy].write_text(yaml.safe_dump(data))
    return configs


async def run_block(
    router: router_pb2_grpc.RouterStub, workload: list[tuple[int, Any]], concurrency: int, outcome: Outcome
) -> float:
    queue = iter(workload)

    async def caller() -> None:
        for _index, request in queue:
            await timed_stream(router, request, outcome)

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return time.perf_counter() - began


async def run_prefix_comparison(args: argparse.Namespace, log_dir: Path) -> list[dict[str, Any]]:
    outcomes = {policy: Outcome() for policy in PREFIX_POLICIES}
    elapsed = dict.fromkeys(PREFIX_POLICIES, 0.0)
    loads: dict[str, list[float]] = {policy: [] for policy in PREFIX_POLICIES}
    affinity: dict[str, Counter[str]] = {policy: Counter() for policy in PREFIX_POLICIES}
    per_block = args.requests // (len(BLOCK_ORDER) // len(PREFIX_POLICIES))
    with running_mesh(vllm_config(BLOCK_ORDER[0], args)) as mesh, pinned_workers(mesh, [0, 1], log_dir) as procs:
        started = time.monotonic()
        await wait_for_workers(mesh.scheduler_address, 2, procs, timeout_s=900)
        print(f"2 vLLM workers ready in {time.monotonic() - started:.0f}s", flush=True)
        unpin_worker_main_processes(procs)
        configs = policy_configs(Path(os.environ["HEADRACE_CONFIG"]))
        metrics_port = mesh.settings.scheduler.metrics_port or 0
        async with grpc.aio.insecure_channel(mesh.router_address) as channel:
            router = router_pb2_grpc.RouterStub(channel)
            for i in range(4):
                warm_request = generation_pb2.GenerateRequest(
                    prompt=f"Warm-up {i}: name a river.",
                    sampling=generation_pb2.SamplingParams(max_tokens=8),
                    cache=generation_pb2.CachePolicy(no_cache=True, no_store=True),
                )
                await timed_stream(router, warm_request, Outcome())
            current = BLOCK_ORDER[0]
            for block, policy in enumerate(BLOCK_ORDER):
                if policy != current:
                    switch_scheduler(mesh, configs[policy], log_dir / "scheduler.log")
                    await wait_for_workers(mesh.scheduler_address, 2, procs, timeout_s=60)
                    await until_router_places(router)
                    current = policy
                workload = shared_prefix_requests(block, per_block, args.prompts, args.prompt_chars, args.max_tokens)
                loads[policy].append(os.getloadavg()[0])
                before = scheduler_counters(metrics_port)
                elapsed[policy] += await run_block(router, workload, args.concurrency, outcomes[policy])
                affinity[policy].update(scheduler_counters(metrics_port) - before)
                loads[policy].append(os.getloadavg()[0])
                done = outcomes[policy]
                print(
                    f"block {block} ({policy}): {len(done.total_s)} done so far, "
                    f"prefix cache hit {done.cached_prompt_tokens / max(1, done.prompt_tokens):.0%}",
                    flush=True,
                )
    results = []
    for policy in PREFIX_POLICIES:
        outcome = outcomes[policy]
        results.append(
            {
                "policy": policy,
                "requests": len(outcome.total_s),
                "errors": dict(outcome.errors),
                "elapsed_s": elapsed[policy],
                "requests_per_s": len(outcome.total_s) / elapsed[policy],
                "output_tokens_per_s": outcome.completion_tokens / elapsed[policy],
                "ttft_p50_ms": percentile(outcome.ttft_s, 50) * 1000,
                "ttft_p99_ms": percentile(outcome.ttft_s, 99) * 1000,
                "total_p50_ms": percentile(outcome.total_s, 50) * 1000,
                "total_p99_ms": percentile(outcome.total_s, 99) * 1000,
                "prompt_tokens": outcome.prompt_tokens,
                "cached_prompt_tokens": outcome.cached_prompt_tokens,
                "prefix_cache_hit": outcome.cached_prompt_tokens / max(1, outcome.prompt_tokens),
                "per_worker": dict(outcome.workers),
                "affinity": dict(affinity[policy]),
                "load_average_1m": loads[policy],
            }
        )
    return results


# --- part 2: overload ---------------------------------------------------------------


OVERLOAD_TOKENS = 20
# Two identical pools but for their queue: none (a request is admitted only
# onto a free slot), and one as deep as the pool's slots (bursts wait, at
# most about one request's time).
OVERLOAD_POOLS = {"no-queue": 0, "queue": 1}


def overload_config(args: argparse.Namespace) -> dict[str, Any]:
    engine = {
        "kind": "synthetic",
        "ttft_ms": args.synthetic_ttft_ms,
        "tokens_per_s": args.synthetic_tokens_per_s,
        "max_concurrency": args.slots_per_worker,
    }
    return {
        "pools": {pool: {"workers": 2, "engine": engine} for pool in OVERLOAD_POOLS},
        "models": {pool: {"default_version": "1", "versions": {"1": {"pool": pool}}} for pool in OVERLOAD_POOLS},
        "default_model": "queue",
        "scheduler": {
            "pools": {
                pool: {"queue_limit": depth * 2 * args.slots_per_worker} for pool, depth in OVERLOAD_POOLS.items()
            }
        },
        "cache": {"enabled": False},
    }


def pool_capacity_rps(args: argparse.Namespace) -> float:
    seconds = float(args.synthetic_ttft_ms) / 1000 + (OVERLOAD_TOKENS - 1) / float(args.synthetic_tokens_per_s)
    return 2 * int(args.slots_per_worker) / seconds


async def open_loop(
    router: router_pb2_grpc.RouterStub,
    model: str,
    rate: float,
    seconds: float,
    outcome: Outcome,
    on_tick: Any = None,
) -> int:
    """Send at a fixed rate whatever the answers do (arrivals do not wait
    for departures, as with real users). Returns requests sent."""
    tasks: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    sent = 0
    while (now := time.monotonic()) - started < seconds:
        due = int((now - started) * rate) + 1
        while sent < due:
            request = generation_pb2.GenerateRequest(
                model=model,
                prompt=f"overload request {sent}",
                sampling=generation_pb2.SamplingParams(max_tokens=OVERLOAD_TOKENS, temperature=0.0),
                cache=generation_pb2.CachePolicy(no_cache=True, no_store=True),
            )
            task = asyncio.create_task(timed_stream(router, request, outcome))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        if on_tick is not None:
            on_tick()
        await asyncio.sleep(min(0.005, 1 / rate))
    if tasks:
        await asyncio.wait(tasks)
    return sent


def latency_row(name: str, rate: float, seconds: float, sent: int, outcome: Outcome) -> list[Any]:
    return [
        name,
        rate,
        sent,
        len(outcome.total_s),
        outcome.errors.get("RESOURCE_EXHAUSTED", 0),
        sum(v for k, v in outcome.errors.items() if k != "RESOURCE_EXHAUSTED"),
        len(outcome.total_s) / seconds,
        percentile(outcome.ttft_s, 50) * 1000,
        percentile(outcome.ttft_s, 99) * 1000,
        percentile(outcome.total_s, 50) * 1000,
        percentile(outcome.total_s, 99) * 1000,
        percentile(outcome.queue_ms, 99),
    ]


async def run_overload(args: argparse.Namespace) -> dict[str, Any]:
    capacity = pool_capacity_rps(args)
    baseline_rate, overload_rate = capacity / 2, capacity * 10
    rows: list[list[Any]] = []
    phases: dict[str, Any] = {}
    rss: list[tuple[float, float]] = []
    with running_mesh(overload_config(args)) as mesh:
        began = time.monotonic()
        # Only the scheduler's: each process's reading walks /proc, inside the open loop.
        scheduler_pid = next(p.pid for p in mesh.processes if p.name == "scheduler")

        def sample() -> None:
            now = time.monotonic() - began
            if not rss or now - rss[-1][0] >= 5.0:
                rss.append((now, process_group_rss_mib(scheduler_pid)))

        load_before = os.getloadavg()[0]
        async with grpc.aio.insecure_channel(mesh.router_address) as channel:
            router = router_pb2_grpc.RouterStub(channel)
            for pool in OVERLOAD_POOLS:
                await open_loop(router, pool, baseline_rate, 2.0, Outcome())  # warm-up
            baseline = Outcome()
            sent = await open_loop(router, "no-queue", baseline_rate, args.baseline_seconds, baseline, sample)
            phases["baseline"] = {"rate": baseline_rate, "seconds": args.baseline_seconds, "sent": sent}
            phases["baseline"].update(summary(baseline))
            rows.append(latency_row("baseline, 0.5x", baseline_rate, args.baseline_seconds, sent, baseline))
            for pool, depth in OVERLOAD_POOLS.items():
                outcome = Outcome()
                sent = await open_loop(router, pool, overload_rate, args.overload_seconds, outcome, sample)
                name = f"10x, queue {depth * 2 * args.slots_per_worker}"
                phases[name] = {"rate": overload_rate, "seconds": args.overload_seconds, "sent": sent}
                phases[name].update(summary(outcome))
                rows.append(latency_row(name, overload_rate, args.overload_seconds, sent, outcome))
        rss.append((time.monotonic() - began, process_group_rss_mib(scheduler_pid)))
        async with mesh.internal_channel(mesh.scheduler_address, Role.SCHEDULER) as scheduler_channel:
            status = await scheduler_pb2_grpc.SchedulerStub(scheduler_channel).GetPoolStatus(
                scheduler_pb2.GetPoolStatusRequest()
            )
    return {
        "capacity_rps": capacity,
        "slots": 2 * args.slots_per_worker,
        "phases": phases,
        "rows": rows,
        "scheduler_rss_mib": rss,
        "after": {p.pool: {"queued": dict(p.queued), "leased": p.leased} for p in status.pools},
        "load_average_1m": [load_before, os.getloadavg()[0]],
    }


def summary(outcome: Outcome) -> dict[str, Any]:
    return {
        "admitted": len(outcome.total_s),
        "errors": dict(outcome.errors),
        "retry_after_values": dict(outcome.retry_after),
        "ttft_p50_ms": percentile(outcome.ttft_s, 50) * 1000,
        "ttft_p99_ms": percentile(outcome.ttft_s, 99) * 1000,
        "total_p50_ms": percentile(outcome.total_s, 50) * 1000,
        "total_p99_ms": percentile(outcome.total_s, 99) * 1000,
        "queue_p50_ms": percentile(outcome.queue_ms, 50),
        "queue_p99_ms": percentile(outcome.queue_ms, 99),
    }


# --- report ----------------------------------------------------------------------


def report(prefix: list[dict[str, Any]] | None, prefix_note: str, overload: dict[str, Any] | None, args: Any) -> None:
    engines = (
        "2 vLLM workers, SmolLM2-135M, one core each"
        if args.prefix_engine == "vllm"
        else "DRY RUN on the synthetic engine: the numbers mean nothing"
    )
    lines = [f"## Placement: prefix affinity vs round robin ({engines})", ""]
    if prefix:
        lines.append(
            f"{args.requests} chat requests per policy, run in blocks on the same 2 engines in the order "
            f"{', '.join(BLOCK_ORDER)} (the policy switched by restarting the scheduler alone); each block has "
            f"its own {args.prompts} system prompts of {args.prompt_chars} characters (+ a short question each), "
            f"so no block finds another's prompts cached. {args.max_tokens} output tokens, {args.concurrency} "
            f"concurrent callers, KV cache {args.kv_gib} GiB per engine."
        )
        lines.append("")
        lines.append(
            markdown_table(
                [
                    "policy",
                    "req/s",
                    "output tok/s",
                    "ttft p50 ms",
                    "ttft p99 ms",
                    "total p50 ms",
                    "total p99 ms",
                    "prefix cache hit",
                    "per worker",
                    "affinity home / spill",
                    "workers dropped (stale)",
                    "errors",
                ],
                [
                    [
                        r["policy"],
                        r["requests_per_s"],
                        r["output_tokens_per_s"],
                        r["ttft_p50_ms"],
                        r["ttft_p99_ms"],
                        r["total_p50_ms"],
                        r["total_p99_ms"],
                        f"{r['prefix_cache_hit']:.0%}",
                        " / ".join(str(v) for _, v in sorted(r["per_worker"].items())),
                        f"{r['affinity'].get('home', 0)} / {r['affinity'].get('spill', 0)}"
                        if "home" in r["affinity"]
                        else "-",
                        r["affinity"].get("workers_dropped", 0),
                        sum(r["errors"].values()),
                    ]
                    for r in prefix
                ],
            )
        )
        if len(prefix) == 2:
            rr, pa = prefix
            throughput = pa["requests_per_s"] / rr["requests_per_s"]
            p50, p99 = pa["ttft_p50_ms"] / rr["ttft_p50_ms"], pa["ttft_p99_ms"] / rr["ttft_p99_ms"]
            lines.append("")
            lines.append(
                f"prefix affinity vs round robin: throughput {throughput:.2f}x, TTFT p50 {p50:.2f}x, p99 {p99:.2f}x."
            )
    else:
        lines.append(f"Not run: {prefix_note}")
    lines += ["", "## Overload: 10x the pool's capacity for a minute (synthetic engine, isolating the scheduler)", ""]
    if overload:
        lines.append(
            f"Each pool: 2 workers x {args.slots_per_worker} slots, {OVERLOAD_TOKENS} tokens per request at "
            f"{args.synthetic_tokens_per_s:g} tokens/s after {args.synthetic_ttft_ms:g} ms: capacity "
            f"{overload['capacity_rps']:.1f} req/s. Open-loop arrivals through the router; one pool admits only "
            "onto a free slot (queue 0), the other queues as many requests as it has slots."
        )
        lines.append("")
        lines.append(
            markdown_table(
                [
                    "phase",
                    "offered req/s",
                    "sent",
                    "admitted",
                    "RESOURCE_EXHAUSTED",
                    "other errors",
                    "admitted req/s",
                    "ttft p50 ms",
                    "ttft p99 ms",
                    "total p50 ms",
                    "total p99 ms",
                    "queue p99 ms",
                ],
                overload["rows"],
            )
        )
        rss = overload["scheduler_rss_mib"]
        lines.append("")
        lines.append(
            "Scheduler RSS over the run (MiB, about every 5 s): "
            + ", ".join(f"{mib:.1f}" for _, mib in rss)
            + f". Afterwards: {overload['after']}."
        )
    write_results(
        "placement",
        {"prefix": prefix, "prefix_note": prefix_note, "overload": overload, "args": vars(args)},
        "\n".join(lines),
    )


async def main_async(args: argparse.Namespace) -> None:
    prefix: list[dict[str, Any]] | None = None
    note = ""
    log_dir = Path(args.log_dir)
    if args.part in ("all", "prefix"):
        available = memory_available_gib()
        if args.prefix_engine == "vllm" and available < args.min_free_gib:
            note = f"{available:.1f} GiB of memory available, {args.min_free_gib:g} GiB needed for 2 vLLM engines"
            print(f"skipping the vLLM part: {note}", flush=True)
        else:
            prefix = await run_prefix_comparison(args, log_dir)
            for row in prefix:
                print(row, flush=True)
    overload = await run_overload(args) if args.part in ("all", "overload") else None
    report(prefix, note or "not asked for (--part)", overload, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["all", "prefix", "overload"], default="all")
    parser.add_argument("--requests", type=int, default=320)
    parser.add_argument("--prompts", type=int, default=48, help="distinct system prompts")
    parser.add_argument("--prompt-chars", type=int, default=6000, help="length of each system prompt")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--kv-gib", type=int, default=1, help="KV cache per engine")
    parser.add_argument("--max-num-seqs", type=int, default=16)
    parser.add_argument("--min-free-gib", type=float, default=12.0)
    parser.add_argument(
        "--prefix-engine",
        choices=["vllm", "synthetic"],
        default="vllm",
        help="synthetic: a dry run of part 1's machinery (its numbers mean nothing)",
    )
    parser.add_argument("--log-dir", default="/tmp/headrace-bench-placement")
    parser.add_argument("--slots-per-worker", type=int, default=2)
    parser.add_argument("--synthetic-ttft-ms", type=float, default=50.0)
    parser.add_argument("--synthetic-tokens-per-s", type=float, default=40.0)
    parser.add_argument("--baseline-seconds", type=float, default=20.0)
    parser.add_argument("--overload-seconds", type=float, default=60.0)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
