"""make bench-autoscale: one load trace (base rate, ramp to 10x, hold, back
down, base again; headrace/workload) replayed against the same pool three
ways, one after the other on this machine:

- `static-max`: as many workers as the peak needs, all the time;
- `static-min`: one worker;
- `autoscaler`: the scheduler's decision followed by `headrace up`'s local
  actuator (services/scheduler/autoscaler.py, headrace/local/actuator.py),
  from min 1 to the same max.

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


def config(args: argparse.Namespace, case: str) -> dict[str, Any]:
    workers = {"static-max": args.max_workers, "static-min": 1, "autoscaler": 1}[case]
    autoscale: dict[str, Any] = {"enabled": False}
    if case == "autoscaler":
        autoscale = {
            "enabled": True,
            "min_workers": 1,
            "max_workers": args.max_workers,
            "ttft_slo_s": args.slo,
            "queue_wait_slo_s": args.slo / 2,
            "window_s": 10,
            "scale_up_cooldown_s": 5,
            "scale_down_cooldown_s": 20,
            "scale_down_window_s": 30,
            "cold_start_s": args.start_delay + 5,
        }
    return {
        "pools": {
            POOL: {
                "workers": workers,
                "price_per_hour": 1.0,
                "engine": {
                    "kind": "synthetic",
                    "ttft_ms": 20,
                    "tokens_per_s": args.tokens_per_s,
                    "max_concurrency": args.slots,
                    "start_delay_s": args.start_delay,
                },
            }
        },
        "models": {"gen": {"default_version": "1", "versions": {"1": {"pool": POOL}}}},
        "default_model": "gen",
        "cache": {"enabled": False},
        "scheduler": {"pools": {POOL: {"autoscale": autoscale}}},
    }


@dataclass
class Watch:
    """The pool over time: (seconds since the replay began, workers alive,
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


async def watch_pool(state_dir: Path, scheduler: str, started: float, watch: Watch, stop: asyncio.Event) -> None:
    async with grpc.aio.insecure_channel(scheduler) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        while not stop.is_set():
            alive = sum(
                1
                for p in json.loads((state_dir / "mesh.json").read_text())["processes"]
                if p["module"] == "services.worker"
            )
            now = time.monotonic() - started
            try:
                status = (await stub.GetPoolStatus(scheduler_pb2.GetPoolStatusRequest(pool=POOL), timeout=2)).pools[0]
                serving, desired = status.workers, status.desired_workers
                if not watch.changes or watch.changes[-1][1] != desired:
                    watch.changes.append((now, desired, status.desired_reason))
            except grpc.aio.AioRpcError:
                serving, desired = -1, -1
            watch.samples.append((now, alive, serving, desired))
            await asyncio.sleep(0.5)


async def run_case(args: argparse.Namespace, case: str, shape: WorkloadShape) -> dict[str, Any]:
    records = list(generate(shape))
    with running_mesh(config(args, case), supervised=True) as mesh:
        state_dir = Path(mesh.settings.state_dir)
        watch, stop = Watch(), asyncio.Event()
        started = time.monotonic()
        watcher = asyncio.create_task(watch_pool(state_dir, mesh.scheduler_address, started, watch, stop))
        async with AsyncHeadraceClient(mesh.router_address, timeout=60) as client:
            result = await Replayer(client, max_in_flight=512).replay(records)
        stop.set()
        await watcher
    ttfts = [o.ttft_s for o in result.online if not o.error and o.ttft_s is not None]
    within = sum(1 for o in result.online if not o.error and o.ttft_s is not None and o.ttft_s <= args.slo)
    summary: dict[str, Any] = {
        "requests": len(result.online),
        "errors": sum(1 for o in result.online if o.error),
        "within_slo": within / len(result.online) if result.online else 0.0,
        "worker_seconds": watch.worker_seconds(),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
        "late_p99_s": percentile([o.late_s for o in result.online], 99),
    }
    if case == "autoscaler":
        summary["asked_for_more_after_s"] = watch.first_after(shape.lead_s, lambda alive, serving, desired: desired > 1)
        summary["second_worker_serving_after_s"] = watch.first_after(
            shape.lead_s, lambda alive, serving, desired: serving > 1
        )
        summary["max_workers_used"] = max((alive for _, alive, _, _ in watch.samples), default=0)
        summary["flaps"] = watch.flaps()
        summary["timeline"] = watch.samples[::4]
        summary["changes"] = watch.changes
    print(f"{case}: {json.dumps({k: v for k, v in summary.items() if k != 'timeline'})}", flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.autoscale")
    parser.add_argument("--rate", type=float, default=2.0, help="base requests/s (peak: 10x)")
    parser.add_argument("--lead", type=float, default=40.0, help="seconds at the base rate before the ramp")
    parser.add_argument("--ramp", type=float, default=20.0)
    parser.add_argument("--hold", type=float, default=40.0)
    parser.add_argument("--tail", type=float, default=80.0, help="seconds at the base rate after the ramp")
    parser.add_argument("--slo", type=float, default=1.0, help="TTFT SLO in seconds")
    parser.add_argument("--max-workers", type=int, default=4)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--tokens-per-s", type=float, default=100.0)
    parser.add_argument("--start-delay", type=float, default=10.0, help="seconds a worker takes to start")
    parser.add_argument("--cases", default="static-max,static-min,autoscaler")
    args = parser.parse_args()
    shape = WorkloadShape(
        seed=42,
        duration_s=args.lead + 2 * args.ramp + args.hold + args.tail,
        rate_rps=args.rate,
        profile="ramp",
        peak_factor=10.0,
        lead_s=args.lead,
        ramp_s=args.ramp,
        hold_s=args.hold,
        repeat_share=0.0,
        paraphrase_share=0.0,
        hard_share=0.0,
        long_share=0.0,
        batch_share=0.0,
    )
    results = {case: asyncio.run(run_case(args, case, shape)) for case in args.cases.split(",")}
    base = results.get("static-max", {}).get("worker_seconds")
    rows = []
    for case, r in results.items():
        share = r["worker_seconds"] / base if base else float("nan")
        rows.append(
            [
                case,
                f"{100 * r['within_slo']:.1f}%",
                f"{r['worker_seconds']:.0f} ({share:.2f}x)",
                f"{1000 * (r['ttft_p50_s'] or 0):.0f} / {1000 * (r['ttft_p99_s'] or 0):.0f} ms",
                str(r["errors"]),
                str(r.get("flaps", "-")),
                "-"
                if r.get("second_worker_serving_after_s") is None
                else f"{r['second_worker_serving_after_s']:.1f} s",
            ]
        )
    table = (
        f"Trace: {args.rate:g}/s for {args.lead:g} s, ramp to {10 * args.rate:g}/s over {args.ramp:g} s, hold "
        f"{args.hold:g} s, back down, {args.tail:g} s at {args.rate:g}/s (Poisson; 32-token answers). Synthetic "
        f"engine: {args.slots} slots, {args.tokens_per_s:g} tokens/s, {args.start_delay:g} s start. TTFT SLO "
        f"{args.slo:g} s.\n\n"
        + markdown_table(
            [
                "case",
                "within SLO",
                "worker-seconds (vs static-max)",
                "TTFT p50 / p99",
                "errors",
                "flaps",
                "2nd worker serving after ramp start",
            ],
            rows,
        )
    )
    write_results("autoscale", {"args": vars(args), "results": results}, table)


if __name__ == "__main__":
    main()
