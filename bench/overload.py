"""make bench-overload: 10x overload with the default admission settings.

Two identical pools of the synthetic engine (2 workers, few slots each)
side by side in one mesh, so the machine's load weighs on both alike:

- `wait-bound`: the defaults (the queue holds what the pool drains within
  max_expected_wait_s, 5 s; services/scheduler/wait_bound.py);
- `count-256`: the queue bounded by the count alone (max_expected_wait_s
  set out of reach, so queue_limit, 256, decides), as before.

Each gets a warm-up at half its capacity, then an open-loop load at ten
times its capacity (arrivals do not wait for answers, as with real users).
Reported per pool: admitted requests' queue wait p50/p99, how fast a
refusal comes back (p50/p99), and how good Retry-After is: for each
refusal, its Retry-After against the queue wait actually served to the
last request admitted before it (the place the refused one would have
had). Absolute numbers depend on what else runs on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from bench.harness import markdown_table, percentile, running_mesh, write_results
from headrace.v1 import generation_pb2, router_pb2_grpc

TOKENS = 20
POOLS = {"wait-bound": {}, "count-256": {"max_expected_wait_s": 3600}}


@dataclass
class Sent:
    at: float
    # Admitted: the queue wait; refused: how long the refusal took and its Retry-After.
    queue_s: float | None = None
    refused_in_s: float | None = None
    retry_after_s: float | None = None
    other_error: str = ""


@dataclass
class Run:
    sent: list[Sent] = field(default_factory=list)


def config(args: argparse.Namespace) -> dict[str, Any]:
    engine = {
        "kind": "synthetic",
        "ttft_ms": args.ttft_ms,
        "tokens_per_s": args.tokens_per_s,
        "max_concurrency": args.slots_per_worker,
    }
    return {
        "pools": {pool: {"workers": 2, "engine": engine} for pool in POOLS},
        "models": {pool: {"default_version": "1", "versions": {"1": {"pool": pool}}} for pool in POOLS},
        "default_model": "wait-bound",
        "scheduler": {"pools": {pool: dict(overrides) for pool, overrides in POOLS.items()}},
        "cache": {"enabled": False},
    }


def capacity_rps(args: argparse.Namespace) -> float:
    seconds = float(args.ttft_ms) / 1000 + (TOKENS - 1) / float(args.tokens_per_s)
    return 2 * int(args.slots_per_worker) / seconds


async def one(router: router_pb2_grpc.RouterStub, model: str, index: int, record: Sent) -> None:
    request = generation_pb2.GenerateRequest(
        model=model,
        prompt=f"overload {index}",
        sampling=generation_pb2.SamplingParams(max_tokens=TOKENS, temperature=0.0),
        cache=generation_pb2.CachePolicy(no_cache=True, no_store=True),
    )
    started = time.monotonic()
    last = None
    try:
        async for chunk in router.GenerateStream(request):
            last = chunk
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            record.refused_in_s = time.monotonic() - started
            trailing = dict(exc.trailing_metadata() or ())
            if "retry-after" in trailing:
                record.retry_after_s = float(trailing["retry-after"])
        else:
            record.other_error = exc.code().name
        return
    if last is not None:
        record.queue_s = last.timing.queue_ms / 1000


async def open_loop(router: router_pb2_grpc.RouterStub, model: str, rate: float, seconds: float) -> Run:
    run = Run()
    tasks: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    while (now := time.monotonic()) - started < seconds:
        due = int((now - started) * rate) + 1
        while len(run.sent) < due:
            record = Sent(at=time.monotonic())
            run.sent.append(record)
            task = asyncio.create_task(one(router, model, len(run.sent), record))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(min(0.005, 1 / rate))
    if tasks:
        await asyncio.wait(tasks)
    return run


def retry_after_accuracy(run: Run) -> dict[str, float]:
    """Each refusal's Retry-After over the wait served to the last request
    admitted before it (ratio 1: exact)."""
    admitted = [(s.at, s.queue_s) for s in run.sent if s.queue_s is not None]
    times = [at for at, _ in admitted]
    ratios: list[float] = []
    errors: list[float] = []
    for s in run.sent:
        if s.retry_after_s is None:
            continue
        i = bisect.bisect_right(times, s.at) - 1
        if i < 0:
            continue
        served = admitted[i][1]
        assert served is not None
        errors.append(s.retry_after_s - served)
        ratios.append(s.retry_after_s / max(served, 0.05))
    within = sum(1 for e in errors if abs(e) <= 1.0) / len(errors) if errors else float("nan")
    return {
        "ratio_p50": percentile(ratios, 50),
        "ratio_p10": percentile(ratios, 10),
        "ratio_p90": percentile(ratios, 90),
        "error_p50_s": percentile(errors, 50),
        "abs_error_p90_s": percentile([abs(e) for e in errors], 90),
        "within_1s": within,
    }


def summarize(run: Run, seconds: float) -> dict[str, Any]:
    queue = [s.queue_s for s in run.sent if s.queue_s is not None]
    refused = [s.refused_in_s for s in run.sent if s.refused_in_s is not None]
    retry = [s.retry_after_s for s in run.sent if s.retry_after_s is not None]
    return {
        "sent": len(run.sent),
        "admitted": len(queue),
        "refused": len(refused),
        "other_errors": sum(1 for s in run.sent if s.other_error),
        "admitted_per_s": len(queue) / seconds,
        "queue_p50_s": percentile(queue, 50),
        "queue_p99_s": percentile(queue, 99),
        "refusal_p50_ms": percentile(refused, 50) * 1000,
        "refusal_p99_ms": percentile(refused, 99) * 1000,
        "retry_after_min_s": min(retry, default=float("nan")),
        "retry_after_p50_s": percentile(retry, 50),
        "retry_after_max_s": max(retry, default=float("nan")),
        "retry_after_accuracy": retry_after_accuracy(run),
    }


async def main_async(args: argparse.Namespace) -> None:
    capacity = capacity_rps(args)
    results: dict[str, Any] = {"capacity_rps": capacity, "offered_rps": capacity * 10, "pools": {}}
    rows: list[list[Any]] = []
    with running_mesh(config(args)) as mesh:
        load_before = os.getloadavg()[0]
        async with grpc.aio.insecure_channel(mesh.router_address) as channel:
            router = router_pb2_grpc.RouterStub(channel)
            for pool in POOLS:
                await open_loop(router, pool, capacity / 2, args.warmup_seconds)
                run = await open_loop(router, pool, capacity * 10, args.seconds)
                summary = summarize(run, args.seconds)
                results["pools"][pool] = summary
                accuracy = summary["retry_after_accuracy"]
                rows.append(
                    [
                        pool,
                        summary["sent"],
                        summary["admitted"],
                        summary["refused"],
                        summary["queue_p50_s"],
                        summary["queue_p99_s"],
                        summary["refusal_p99_ms"],
                        f"{summary['retry_after_min_s']:.0f}-{summary['retry_after_max_s']:.0f}",
                        accuracy["ratio_p50"],
                        accuracy["within_1s"],
                    ]
                )
        results["load_average_1m"] = [load_before, os.getloadavg()[0]]
    table = markdown_table(
        [
            "pool",
            "sent",
            "admitted",
            "refused",
            "queue p50 s",
            "queue p99 s",
            "refusal p99 ms",
            "Retry-After s",
            "Retry-After / served wait, p50",
            "Retry-After within 1 s",
        ],
        rows,
    )
    note = (
        f"10x overload for {args.seconds:.0f}s per pool: {capacity * 10:.0f} req/s offered to a pool of "
        f"{2 * args.slots_per_worker} slots ({capacity:.1f} req/s). Synthetic engine, "
        f"shared machine (load {results['load_average_1m'][0]:.1f} -> {results['load_average_1m'][1]:.1f})."
    )
    print(note)
    print(table)
    write_results("overload", {**results, "args": vars(args)}, note + "\n\n" + table)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overload")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup-seconds", type=float, default=3.0)
    parser.add_argument("--slots-per-worker", type=int, default=4)
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--tokens-per-s", type=float, default=20.0)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
