"""make bench-autoscale: one load trace (base rate, ramp to 10x, hold, back
down, base again; headrace/workload) replayed against the same pool three
ways, one after the other on this machine:

- `static-max`: as many workers as the peak needs, all the time;
- `static-min`: one worker;
- `autoscaler`: the scheduler's decision followed by `headrace up`'s local
  actuator (services/scheduler/autoscaler.py, headrace/local/actuator.py),
  from min 1 to the same max;
- `autoscaler-warm`: the same with `min_workers: 2`, one worker kept warm
  for a rise faster than a cold start (what an operator who expects flash
  crowds would configure).

The synthetic engine stands in for a model, with a start-up delay as a
model load would have (`--start-delay`; vLLM on this CPU takes 30-90 s):
this measures the control loop, not an engine. Reported per case: the
share of online requests whose TTFT met the SLO (errors count as misses),
worker-seconds (what the pool cost: worker processes alive, starting ones
included, sampled every 0.5 s), TTFT p50/p99, errors, and for the
autoscaler how long after the ramp began it first asked for more and first
had one more worker serving, and its flaps (direction changes).
Target (issue 12): >= 95% within SLO at <= 60% of static-max worker-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc.aio

from bench.harness import markdown_table, running_mesh, write_results
from headrace.client import AsyncHeadraceClient
from headrace.v1 import scheduler_pb2, scheduler_pb2_grpc
from headrace.workload.generate import WorkloadShape, generate
from headrace.workload.replay import Replayer
from headrace.workload.report import percentile

POOL = "gen"


# The second pool of the `two-pools` case: slower per sequence and cheaper
# per token (a CPU pool beside a GPU one, say). It takes the load first and
# grows first; the first pool takes what would break the cheap one's SLO.
CHEAP_POOL = "cheap"
# Workers each case starts with (static-max: --max-workers).
INITIAL_WORKERS = {"static-min": 1, "autoscaler": 1, "autoscaler-warm": 2, "two-pools": 1}
AUTOSCALED = ("autoscaler", "autoscaler-warm", "two-pools")


def autoscaling(args: argparse.Namespace, *, min_workers: int = 1) -> dict[str, Any]:
    return {
        "enabled": True,
        "min_workers": min_workers,
        "max_workers": args.max_workers,
        "ttft_slo_s": args.slo,
        "queue_wait_slo_s": args.slo / 2,
        "window_s": 10,
        "scale_up_cooldown_s": 5,
        "scale_down_cooldown_s": 20,
        "scale_down_window_s": 30,
        "cold_start_s": args.cold_start if args.cold_start is not None else args.start_delay + 5,
    }


def pool(args: argparse.Namespace, workers: int, *, price: float, tokens_per_s: float) -> dict[str, Any]:
    return {
        "workers": workers,
        "price_per_hour": price,
        # What one worker delivers with every slot busy: the cost per token
        # placement compares (a benchmark's figure in a real deployment).
        "throughput_tokens_per_s": tokens_per_s * args.slots,
        "engine": engine(args, tokens_per_s),
    }


def engine(args: argparse.Namespace, tokens_per_s: float) -> dict[str, Any]:
    if args.engine == "vllm":
        # The prepared default model; every worker's engine on all the
        # cores (on this 2-core machine a second worker adds no capacity:
        # the run shows the actuator's mechanics with the real engine).
        return {"kind": "vllm", "max_num_seqs": args.slots, "cpu_kv_cache_gib": 1, "default_max_tokens": 32}
    return {
        "kind": "synthetic",
        "ttft_ms": 20,
        "tokens_per_s": tokens_per_s,
        "max_concurrency": args.slots,
        "start_delay_s": args.start_delay,
    }


def config(args: argparse.Namespace, case: str) -> dict[str, Any]:
    workers = INITIAL_WORKERS[case] if case != "static-max" else args.max_workers
    pools = {POOL: pool(args, workers, price=args.price, tokens_per_s=args.tokens_per_s)}
    version: dict[str, Any] = {"pool": POOL}
    scheduler_pools: dict[str, Any] = {
        POOL: {
            "autoscale": autoscaling(args, min_workers=workers)
            if case not in ("static-max", "static-min")
            else {"enabled": False}
        }
    }
    if case == "two-pools":
        pools[CHEAP_POOL] = pool(args, 1, price=args.cheap_price, tokens_per_s=args.cheap_tokens_per_s)
        version = {"pool": CHEAP_POOL, "also_pools": [POOL]}
        # A cheap pool is sized to carry the peak by itself (at its target
        # utilisation); the dear pool keeps one worker for the spill.
        scheduler_pools[CHEAP_POOL] = {"autoscale": {**autoscaling(args), "max_workers": args.cheap_max_workers}}
    return {
        "pools": pools,
        "models": {"gen": {"default_version": "1", "versions": {"1": version}}},
        "default_model": "gen",
        "cache": {"enabled": False},
        "scheduler": {"pools": scheduler_pools},
    }


@dataclass
class Watch:
    """One pool over time: (seconds since the replay began, workers alive,
    workers serving, desired)."""

    samples: list[tuple[float, int, int, int]] = field(default_factory=list)
    # (seconds, desired, reason) at each change of the decision.
    changes: list[tuple[float, int, str]] = field(default_factory=list)

    def worker_seconds(self) -> float:
        total = 0.0
        for (t0, alive, _, _), (t1, _, _, _) in itertools.pairwise(self.samples):
            total += alive * (t1 - t0)
        return total

    def first_after(self, start_s: float, predicate: Any) -> float | None:
        return next((t - start_s for t, *rest in self.samples if t >= start_s and predicate(*rest)), None)

    def flaps(self) -> int:
        """Times the decision went down and then up again: a ramp's one
        rise and one fall are no flap."""
        desired = [d for _, _, _, d in self.samples if d >= 0]
        steps = [b - a for a, b in itertools.pairwise(desired) if b != a]
        return sum(1 for a, b in itertools.pairwise(steps) if a < 0 < b)


def alive_workers(state_dir: Path, pool: str) -> int:
    processes = json.loads((state_dir / "mesh.json").read_text())["processes"]
    return sum(1 for p in processes if p["module"] == "services.worker" and p["args"][1] == pool)


async def watch_pools(
    state_dir: Path, scheduler: str, started: float, watches: dict[str, Watch], stop: asyncio.Event
) -> None:
    async with grpc.aio.insecure_channel(scheduler) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        while not stop.is_set():
            for name, watch in watches.items():
                alive = alive_workers(state_dir, name)
                now = time.monotonic() - started
                try:
                    status = (await stub.GetPoolStatus(scheduler_pb2.GetPoolStatusRequest(pool=name), timeout=2)).pools[
                        0
                    ]
                    serving, desired = status.workers, status.desired_workers
                    if not watch.changes or watch.changes[-1][1] != desired:
                        watch.changes.append((now, desired, status.desired_reason))
                except grpc.aio.AioRpcError:
                    serving, desired = -1, -1
                watch.samples.append((now, alive, serving, desired))
            await asyncio.sleep(0.5)


async def run_case(args: argparse.Namespace, case: str, shape: WorkloadShape) -> dict[str, Any]:
    records = list(generate(shape))
    settings = config(args, case)
    prices = {name: spec["price_per_hour"] for name, spec in settings["pools"].items()}
    with running_mesh(settings, supervised=True) as mesh:
        state_dir = Path(mesh.settings.state_dir)
        watches, stop = {name: Watch() for name in prices}, asyncio.Event()
        started = time.monotonic()
        watcher = asyncio.create_task(watch_pools(state_dir, mesh.scheduler_address, started, watches, stop))
        async with AsyncHeadraceClient(mesh.router_address, timeout=60) as client:
            result = await Replayer(client, max_in_flight=512).replay(records)
        stop.set()
        await watcher
    ttfts = [o.ttft_s for o in result.online if not o.error and o.ttft_s is not None]
    within = sum(1 for o in result.online if not o.error and o.ttft_s is not None and o.ttft_s <= args.slo)
    # Where the misses fall: per 10 s of the trace (since the ramp began).
    misses: dict[int, int] = {}
    for o in result.online:
        if o.error or o.ttft_s is None or o.ttft_s > args.slo:
            bucket = int((o.scheduled_s - shape.lead_s) // 10 * 10)
            misses[bucket] = misses.get(bucket, 0) + 1
    worker_seconds = {name: watch.worker_seconds() for name, watch in watches.items()}
    cost = sum(worker_seconds[name] * prices[name] / 3600 for name in prices)
    summary: dict[str, Any] = {
        "requests": len(result.online),
        "errors": sum(1 for o in result.online if o.error),
        "within_slo": within / len(result.online) if result.online else 0.0,
        "worker_seconds": sum(worker_seconds.values()),
        "worker_seconds_by_pool": worker_seconds,
        "cost_per_1k_requests": 1000 * cost / len(result.online) if result.online else 0.0,
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
        "late_p99_s": percentile([o.late_s for o in result.online], 99),
        "misses_per_10s_since_ramp": dict(sorted(misses.items())),
    }
    if case in AUTOSCALED:
        first = watches[CHEAP_POOL if case == "two-pools" else POOL]
        initial = INITIAL_WORKERS[case]
        summary["asked_for_more_after_s"] = first.first_after(
            shape.lead_s, lambda alive, serving, desired: desired > initial
        )
        summary["second_worker_serving_after_s"] = first.first_after(
            shape.lead_s, lambda alive, serving, desired: serving > initial
        )
        summary["max_workers_used"] = {
            name: max((alive for _, alive, _, _ in w.samples), default=0) for name, w in watches.items()
        }
        summary["flaps"] = sum(w.flaps() for w in watches.values())
        summary["timeline"] = {name: w.samples[::4] for name, w in watches.items()}
        summary["changes"] = {name: w.changes for name, w in watches.items()}
    print(f"{case}: {json.dumps({k: v for k, v in summary.items() if k not in ('timeline', 'changes')})}", flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.autoscale")
    parser.add_argument("--rate", type=float, default=2.0, help="base requests/s (peak: 10x)")
    parser.add_argument("--lead", type=float, default=40.0, help="seconds at the base rate before the ramp")
    parser.add_argument(
        "--ramp",
        default="20,60",
        help="seconds the rise to 10x takes; several (comma-separated) replay one trace each, every case on each",
    )
    parser.add_argument("--hold", type=float, default=40.0)
    parser.add_argument("--tail", type=float, default=80.0, help="seconds at the base rate after the ramp")
    parser.add_argument("--slo", type=float, default=1.0, help="TTFT SLO in seconds")
    parser.add_argument("--max-workers", type=int, default=4)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--tokens-per-s", type=float, default=100.0)
    parser.add_argument("--start-delay", type=float, default=10.0, help="seconds a worker takes to start")
    parser.add_argument("--price", type=float, default=1.0, help="price per worker-hour of the pool")
    parser.add_argument("--cheap-price", type=float, default=0.4, help="two-pools: the cheap pool's price")
    parser.add_argument("--cheap-tokens-per-s", type=float, default=60.0, help="two-pools: the cheap pool's speed")
    parser.add_argument("--engine", choices=("synthetic", "vllm"), default="synthetic")
    parser.add_argument(
        "--cold-start", type=float, default=None, help="the autoscaler's cold_start_s (default: start delay + 5)"
    )
    parser.add_argument("--cheap-max-workers", type=int, default=6, help="two-pools: the cheap pool's max")
    parser.add_argument("--cases", default="static-max,static-min,autoscaler,autoscaler-warm,two-pools")
    parser.add_argument("--name", default="autoscale", help="results file name under bench/results")
    args = parser.parse_args()
    ramps = [float(value) for value in args.ramp.split(",")]
    results: dict[str, dict[str, Any]] = {}
    for ramp_s in ramps:
        shape = WorkloadShape(
            seed=42,
            duration_s=args.lead + 2 * ramp_s + args.hold + args.tail,
            rate_rps=args.rate,
            profile="ramp",
            peak_factor=10.0,
            lead_s=args.lead,
            ramp_s=ramp_s,
            hold_s=args.hold,
            repeat_share=0.0,
            paraphrase_share=0.0,
            hard_share=0.0,
            long_share=0.0,
            batch_share=0.0,
        )
        results[_trace_name(ramp_s)] = {
            case: asyncio.run(run_case(args, case, shape)) for case in args.cases.split(",")
        }
    # When one worker is full: its slots over the time a request holds one.
    per_worker_rps = args.slots / (0.02 + 32 / args.tokens_per_s)
    rows = []
    for ramp_s in ramps:
        by_case = results[_trace_name(ramp_s)]
        base = by_case.get("static-max", {}).get("worker_seconds")
        full_after_s = (per_worker_rps - args.rate) / (9 * args.rate) * ramp_s
        for case, r in by_case.items():
            share = r["worker_seconds"] / base if base else float("nan")
            rows.append(
                [
                    f"{ramp_s:g} s" + ("" if args.engine == "vllm" else f" (one worker full at {full_after_s:.1f} s)"),
                    case,
                    f"{100 * r['within_slo']:.1f}%",
                    f"{r['worker_seconds']:.0f} ({share:.2f}x)",
                    f"{r['cost_per_1k_requests']:.4f}",
                    f"{1000 * (r['ttft_p50_s'] or 0):.0f} / {1000 * (r['ttft_p99_s'] or 0):.0f} ms",
                    str(r["errors"]),
                    str(r.get("flaps", "-")),
                    "-" if r.get("asked_for_more_after_s") is None else f"{r['asked_for_more_after_s']:.1f} s",
                    "-"
                    if r.get("second_worker_serving_after_s") is None
                    else f"{r['second_worker_serving_after_s']:.1f} s",
                ]
            )
    table = (
        f"Traces: {args.rate:g}/s for {args.lead:g} s, ramp to {10 * args.rate:g}/s over "
        f"{' or '.join(f'{r:g}' for r in ramps)} s, hold "
        f"{args.hold:g} s, back down as fast, {args.tail:g} s at {args.rate:g}/s (Poisson; 32-token answers). "
        + (
            f"Engine: vLLM (the prepared SmolLM2), {args.slots} sequences per worker, its real start-up, "
            if args.engine == "vllm"
            else f"Synthetic engine: {args.slots} slots, {args.tokens_per_s:g} tokens/s, {args.start_delay:g} s start, "
        )
        + f"{args.price:g}/h. "
        + ("" if args.engine == "vllm" else f"One worker carries ~{per_worker_rps:.1f} requests/s. ")
        + f"two-pools: the model's first pool is `{CHEAP_POOL}` "
        f"({args.cheap_tokens_per_s:g} tokens/s, {args.cheap_price:g}/h: cheaper per token, slower), "
        f"spilling to `{POOL}`; both autoscaled from 1 worker (cheap: up to {args.cheap_max_workers}). "
        f"TTFT SLO {args.slo:g} s.\n\n"
        + markdown_table(
            [
                "ramp to 10x",
                "case",
                "within SLO",
                "worker-seconds (vs static-max)",
                "cost per 1k requests",
                "TTFT p50 / p99",
                "errors",
                "flaps",
                "asked for more after ramp start",
                "one more worker serving after ramp start",
            ],
            rows,
        )
    )
    write_results(args.name, {"args": vars(args), "results": results}, table)


def _trace_name(ramp_s: float) -> str:
    return f"ramp {ramp_s:g} s"


if __name__ == "__main__":
    main()
