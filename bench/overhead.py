"""make bench-overhead: what the mesh itself adds.

The same synthetic engine (no model, near-zero engine time) is called two
ways in one run, alternating: straight at the worker's gRPC API, and
through the router (validation, scheduler placement and lease, the worker
stream relayed, lease release). Reported: added latency p50/p99 at one
request at a time, requests/s sustained at 64 concurrent callers, and each
service's resident memory. All processes share this machine's cores with
the load generator, as they would on one host.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import grpc.aio

from bench.harness import (
    LatencySample,
    closed_loop,
    deadline_after,
    markdown_table,
    percentile,
    running_mesh,
    write_results,
)
from headrace.runtime.service_certs import Role
from headrace.v1 import generation_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc

TOKENS = 16
CONFIG = {
    "pools": {
        "smollm2": {
            # Fast enough that the engine's own time is negligible next to the mesh's.
            "engine": {"kind": "synthetic", "ttft_ms": 0, "tokens_per_s": 1_000_000, "max_concurrency": 256},
            "workers": 1,
        }
    },
    "models": {"smollm2": {"default_version": "1", "versions": {"1": {"pool": "smollm2"}}}},
    "default_embedding_model": "",
    # Requests skip the cache (no_cache); its embedding model would only
    # compete for the cores.
    "cache": {"semantic": {"enabled": False}},
}


def request(prompt: str) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        prompt=prompt,
        sampling=generation_pb2.SamplingParams(max_tokens=TOKENS, temperature=0.0),
        # Measure the full path: the cache would answer repeated prompts.
        cache=generation_pb2.CachePolicy(no_cache=True, no_store=True),
    )


async def stream_timed(call: grpc.aio.UnaryStreamCall) -> tuple[float, float]:
    started = time.perf_counter()
    ttft = 0.0
    count = 0
    async for _chunk in call:
        if count == 0:
            ttft = time.perf_counter() - started
        count += 1
    if count != TOKENS:
        raise RuntimeError(f"expected {TOKENS} deltas, got {count}")
    return ttft, time.perf_counter() - started


async def run(sequential: int, duration_s: float, concurrency: int) -> None:
    with running_mesh(CONFIG) as mesh:
        worker_address = mesh.worker_addresses()[0]
        async with (
            grpc.aio.insecure_channel(mesh.router_address) as router_channel,
            mesh.internal_channel(worker_address, Role.WORKER) as worker_channel,
        ):
            router = router_pb2_grpc.RouterStub(router_channel)
            worker = worker_pb2_grpc.WorkerStub(worker_channel)

            async def via_router(i: int) -> tuple[float, float]:
                return await stream_timed(router.GenerateStream(request(f"prompt {i}")))

            async def direct(i: int) -> tuple[float, float]:
                return await stream_timed(
                    worker.Generate(
                        worker_pb2.WorkerGenerateRequest(
                            request_id=uuid.uuid4().hex, model_version="smollm2@1", request=request(f"prompt {i}")
                        )
                    )
                )

            paths = {"direct to worker": direct, "through the router": via_router}
            # Warm up both paths (channels, code paths).
            for call in paths.values():
                for i in range(50):
                    await call(i)

            latency = {name: LatencySample() for name in paths}
            # Alternate in blocks so drift hits both paths alike.
            for block in range(sequential // 50):
                for name, call in paths.items():
                    for i in range(50):
                        ttft, total = await call(block * 50 + i)
                        latency[name].ttft_s.append(ttft)
                        latency[name].total_s.append(total)

            throughput: dict[str, float] = {}
            loaded: dict[str, LatencySample] = {}
            for name, call in paths.items():
                loaded[name], throughput[name] = await closed_loop(
                    call, concurrency=concurrency, until=deadline_after(duration_s)
                )
            rss = mesh.rss_mib()

    direct_s, routed_s = latency["direct to worker"], latency["through the router"]
    added_p50 = (percentile(routed_s.total_s, 50) - percentile(direct_s.total_s, 50)) * 1000
    added_p99 = (percentile(routed_s.total_s, 99) - percentile(direct_s.total_s, 99)) * 1000
    rows = []
    for name in paths:
        s = latency[name].summary_ms()
        rows.append(
            [
                name,
                s["ttft_p50_ms"],
                s["ttft_p99_ms"],
                s["total_p50_ms"],
                s["total_p99_ms"],
                throughput[name],
                percentile(loaded[name].total_s, 99) * 1000,
                loaded[name].errors,
            ]
        )
    ratio = throughput["through the router"] / throughput["direct to worker"]
    table = "\n".join(
        [
            f"## Mesh overhead (synthetic engine, {TOKENS} tokens per request)",
            "",
            markdown_table(
                [
                    "path",
                    "ttft p50 ms",
                    "ttft p99 ms",
                    "total p50 ms",
                    "total p99 ms",
                    f"req/s @{concurrency}",
                    f"total p99 ms @{concurrency}",
                    "errors",
                ],
                rows,
            ),
            "",
            f"Added by the mesh, one request at a time: p50 {added_p50:.2f} ms, p99 {added_p99:.2f} ms; "
            f"throughput through the router is {ratio:.2f}x "
            f"of direct ({sequential} sequential requests per path, {duration_s:.0f} s at {concurrency} callers).",
            "",
            markdown_table(["service", "RSS MiB"], [[name, mib] for name, mib in rss.items()]),
        ]
    )
    write_results(
        "overhead",
        {
            "tokens_per_request": TOKENS,
            "sequential": {name: latency[name].summary_ms() for name in paths},
            "added_ms": {"p50": added_p50, "p99": added_p99},
            "throughput_rps": throughput,
            "concurrency": concurrency,
            "loaded": {name: loaded[name].summary_ms() for name in paths},
            "rss_mib": rss,
        },
        table,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequential", type=int, default=1000, help="requests per path at concurrency 1")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per path under load")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(run(args.sequential, args.duration, args.concurrency))


if __name__ == "__main__":
    main()
