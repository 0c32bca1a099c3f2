"""make bench-batch: a batch job through the queue against the same rows
run directly on the engine, and what a running batch does to online latency.

One run, in order:

1. offline: the job's rows, parsed exactly as the scheduler parses them,
   handed all at once to the pool's engine in this process (no mesh, no
   queue): the engine's own batch throughput;
2. the mesh as processes (`headrace up`'s plan: scheduler, worker, the
   batch consumer beside it, router, cache, a private Redis):
   a. online alone: a few callers send short requests for a while;
   b. the same job through the queue (SubmitBatch -> Celery chunks ->
      consumer -> worker), timed from submit until its results stream ends;
   c. the job again, with the online callers running until it ends.

Reported side by side: rows/s and tokens/s offline and through the queue
(their ratio; goal >= 95%), and online p50/p99 latency alone and while the
batch runs. Every row decodes exactly --max-tokens tokens (ignore_eos), so
the paths do the same work. Engines: vllm (the real model; needs
`headrace models prepare`) or synthetic (no model: the queue's own cost).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc.aio

from bench.harness import LatencySample, markdown_table, percentile, running_mesh, write_results
from headrace.batch.input_rows import parse_input
from headrace.batch.model_choice import resolve_batch_model
from headrace.runtime.config import Settings
from headrace.v1 import batch_pb2, generation_pb2, router_pb2_grpc, worker_pb2
from services.worker.convert import generation_request_from_proto
from services.worker.engines import build_engine

POOL = "smollm2"
ENGINES: dict[str, dict[str, Any]] = {
    "vllm": {"kind": "vllm", "max_num_seqs": 64, "cpu_kv_cache_gib": 2},
    # Paced like one stream of a small model on a CPU; capacity as vllm's.
    "synthetic": {"kind": "synthetic", "ttft_ms": 50, "tokens_per_s": 40, "max_concurrency": 64},
}


def mesh_config(engine: str) -> dict[str, Any]:
    return {
        "pools": {POOL: {"engine": ENGINES[engine], "workers": 1}},
        "telemetry": {"log_level": "WARNING"},
    }


def input_file(rows: int, max_tokens: int) -> bytes:
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
        lines.append(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}))
    return ("\n".join(lines) + "\n").encode()


@dataclass
class Throughput:
    rows: int
    tokens: int
    wall_s: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


async def run_offline(settings: Settings, data: bytes) -> Throughput:
    """The rows straight into the engine, all at once, in this process."""
    parsed = parse_input(
        data,
        endpoint="/v1/chat/completions",
        limits=settings.limits,
        max_rows=settings.batch.max_rows_per_batch,
        resolve_model=lambda name, task: resolve_batch_model(settings, name, task=task),
    )
    assert not parsed.errors and parsed.model is not None, parsed.errors[:3]
    engine = build_engine(settings.pool_engine(POOL), models_dir=settings.models_dir)
    print(f"offline: starting the {engine.kind} engine in-process", flush=True)
    await engine.start()
    try:

        async def run(index: int, request: generation_pb2.GenerateRequest) -> int:
            generation = generation_request_from_proto(
                worker_pb2.WorkerGenerateRequest(
                    request_id=f"offline-{index}-{time.monotonic_ns()}",
                    model_version=parsed.model.model_version if parsed.model else "",
                    request=request,
                    priority=generation_pb2.PRIORITY_BATCH,
                )
            )
            tokens = 0
            async for delta in engine.generate(generation):
                if delta.finish_reason is not None:
                    tokens = delta.completion_tokens
            return tokens

        requests = [row.request for row in parsed.rows if isinstance(row.request, generation_pb2.GenerateRequest)]
        await run(-1, requests[0])
        started = time.monotonic()
        tokens = await asyncio.gather(*(run(i, request) for i, request in enumerate(requests)))
        wall = time.monotonic() - started
    finally:
        await engine.close()
    return Throughput(rows=len(tokens), tokens=sum(tokens), wall_s=wall)


async def run_job(router: router_pb2_grpc.RouterStub, data: bytes) -> tuple[Throughput, batch_pb2.BatchJob]:
    """Submit, then follow the results until the job ends."""
    started = time.monotonic()
    job = await router.SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=data, endpoint="/v1/chat/completions"))
    if job.status == batch_pb2.BATCH_STATUS_FAILED:
        raise RuntimeError(f"the job failed validation: {list(job.errors)[:3]}")
    rows = tokens = 0
    async for result in router.StreamBatchResults(batch_pb2.StreamBatchResultsRequest(batch_id=job.id, follow=True)):
        rows += 1
        tokens += result.response.usage.completion_tokens
    wall = time.monotonic() - started
    done = await router.GetBatch(batch_pb2.GetBatchRequest(batch_id=job.id))
    return Throughput(rows=rows, tokens=tokens, wall_s=wall), done


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
    sample = LatencySample()
    counter = iter(range(10**9))

    async def caller() -> None:
        while not until():
            started = time.perf_counter()
            ttft = 0.0
            try:
                async for chunk in router.GenerateStream(online_request(next(counter), max_tokens)):
                    if not ttft and chunk.text:
                        ttft = time.perf_counter() - started
            except grpc.aio.AioRpcError:
                sample.errors += 1
                continue
            sample.ttft_s.append(ttft)
            sample.total_s.append(time.perf_counter() - started)

    await asyncio.gather(*(caller() for _ in range(callers)))
    return sample


def deadline_after(seconds: float) -> Callable[[], bool]:
    stop_at = time.monotonic() + seconds
    return lambda: time.monotonic() >= stop_at


Load = Callable[[Callable[[], bool]], Awaitable[LatencySample]]


async def while_running(
    job: Awaitable[tuple[Throughput, batch_pb2.BatchJob]], load: Load | None = None
) -> tuple[Throughput, batch_pb2.BatchJob, LatencySample]:
    """Run the job, and the online load (if any) until the job ends."""
    if load is None:
        throughput, done = await job
        return throughput, done, LatencySample()
    finished = asyncio.Event()

    async def tracked() -> tuple[Throughput, batch_pb2.BatchJob]:
        try:
            return await job
        finally:
            finished.set()

    outcome, sample = await asyncio.gather(tracked(), load(finished.is_set))
    return outcome[0], outcome[1], sample


async def run(args: argparse.Namespace) -> None:
    config = mesh_config(args.engine)
    data = input_file(args.rows, args.max_tokens)
    offline = await run_offline(Settings(**config), data)
    print(f"offline: {offline.rows} rows in {offline.wall_s:.1f}s ({offline.rows_per_s:.1f} rows/s)", flush=True)

    with running_mesh(config) as mesh:
        async with grpc.aio.insecure_channel(mesh.router_address) as channel:
            router = router_pb2_grpc.RouterStub(channel)

            def load(until: Callable[[], bool]) -> Awaitable[LatencySample]:
                return online_load(router, callers=args.online_callers, max_tokens=args.max_tokens, until=until)

            # Warm every path (engine, channels, consumer) before measuring.
            await run_job(router, input_file(8, args.max_tokens))
            await load(deadline_after(2.0))
            alone = await load(deadline_after(args.online_seconds))
            print(f"online alone: {len(alone.total_s)} requests", flush=True)
            queued, job, _ = await while_running(run_job(router, data))
            print(f"queue: {queued.rows} rows in {queued.wall_s:.1f}s ({queued.rows_per_s:.1f} rows/s)", flush=True)
            mixed, mixed_job, during = await while_running(run_job(router, data), load)
            print(f"queue with online load: {mixed.rows_per_s:.1f} rows/s", flush=True)
            rss = mesh.rss_mib()
    report(args, offline, queued, job, mixed, mixed_job, alone, during, rss)


def report(
    args: argparse.Namespace,
    offline: Throughput,
    queued: Throughput,
    job: batch_pb2.BatchJob,
    mixed: Throughput,
    mixed_job: batch_pb2.BatchJob,
    alone: LatencySample,
    during: LatencySample,
    rss: dict[str, float],
) -> None:
    ratio = queued.rows_per_s / offline.rows_per_s
    load_avg = os.getloadavg()
    throughput_rows = [
        ["offline: engine in-process", offline.rows, offline.wall_s, offline.rows_per_s, offline.tokens_per_s],
        ["through the queue", queued.rows, queued.wall_s, queued.rows_per_s, queued.tokens_per_s],
        ["through the queue, online load too", mixed.rows, mixed.wall_s, mixed.rows_per_s, mixed.tokens_per_s],
    ]
    latency_rows = []
    for name, sample in (("online alone", alone), ("online while the batch runs", during)):
        s = sample.summary_ms()
        latency_rows.append(
            [name, s["requests"], s["ttft_p50_ms"], s["ttft_p99_ms"], s["total_p50_ms"], s["total_p99_ms"], s["errors"]]
        )
    p99_alone = percentile(alone.total_s, 99) * 1000
    p99_during = percentile(during.total_s, 99) * 1000
    table = "\n".join(
        [
            f"## Batch through the queue vs offline ({args.engine} engine, {args.rows} rows of "
            f"{args.max_tokens} tokens)",
            "",
            markdown_table(["path", "rows", "wall s", "rows/s", "tokens/s"], throughput_rows),
            "",
            f"Throughput through the queue is {ratio:.1%} of offline (goal >= 95%). "
            f"Jobs: {job.request_counts.completed} and {mixed_job.request_counts.completed} rows completed, "
            f"{job.request_counts.failed + mixed_job.request_counts.failed} failed.",
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
            markdown_table(["service", "RSS MiB"], [[name, mib] for name, mib in rss.items()]),
            "",
            f"Machine load average during the run (1/5/15 min): {load_avg[0]:.1f} / {load_avg[1]:.1f} / "
            f"{load_avg[2]:.1f} on {os.cpu_count()} cores.",
        ]
    )
    write_results(
        f"batch-{args.engine}",
        {
            "engine": args.engine,
            "rows": args.rows,
            "max_tokens": args.max_tokens,
            "offline": vars(offline) | {"rows_per_s": offline.rows_per_s, "tokens_per_s": offline.tokens_per_s},
            "queue": vars(queued) | {"rows_per_s": queued.rows_per_s, "tokens_per_s": queued.tokens_per_s},
            "queue_with_online": vars(mixed) | {"rows_per_s": mixed.rows_per_s, "tokens_per_s": mixed.tokens_per_s},
            "throughput_ratio": ratio,
            "online_callers": args.online_callers,
            "online_alone": alone.summary_ms(),
            "online_during_batch": during.summary_ms(),
            "rss_mib": rss,
            "load_average": load_avg,
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
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    asyncio.run(run(args))


if __name__ == "__main__":
    # Guarded: vLLM spawns processes that re-import __main__.
    main()
