"""make bench-gateway: what the HTTP gateway adds to a stream.

The same engine is called three ways, side by side in one run, at 1, 16 and
64 concurrent streams:

- straight at the worker (gRPC Worker.Generate: no router, no placement);
- through the router's gRPC API (GenerateStream);
- through the gateway (POST /v1/chat/completions, stream: true, SSE),
  the router's HTTP face in the same process.

Reported per path and concurrency: time to first token (TTFT) and
per-token latency (the mean gap between a stream's deltas, TPOT), p50 and
p99 over requests, and completed streams/s. Every request asks for the same
number of tokens (ignore_eos) and skips the cache. Engines: vLLM on
SmolLM2-135M-Instruct (the real thing) and the synthetic engine at a fixed
pace (the mesh's own overhead without the engine's noise). Every process
shares this machine's cores with the load generator, as on one host.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc.aio

from bench.harness import markdown_table, percentile, running_mesh, write_results
from headrace.models.store import default_models_dir, prepare_model
from headrace.runtime.service_certs import Role
from headrace.v1 import generation_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc
from tests.support.raw_http import RawHttpResponse

LEVELS = (1, 16, 64)
# The cache stays out of it on every path (the gRPC ones set the same policy).
NO_CACHE = {"cache-control": "no-cache, no-store"}
# Callers start spread over this long.
STAGGER_S = 0.5
# Turns each path takes at each concurrency.
ROUNDS = 4
PATHS = ("worker (gRPC)", "router (gRPC)", "gateway (HTTP SSE)")

ENGINES: dict[str, dict[str, Any]] = {
    "vllm": {"kind": "vllm", "max_model_len": 2048, "max_num_seqs": 64, "cpu_kv_cache_gib": 2},
    # vLLM's pace here with one stream (~50 tokens/s), without its noise.
    "synthetic": {"kind": "synthetic", "ttft_ms": 20, "tokens_per_s": 50, "max_concurrency": 64},
}


@dataclass
class StreamTimes:
    """Per request: time to the first delta, and the mean gap between deltas."""

    ttft_s: list[float] = field(default_factory=list)
    tpot_s: list[float] = field(default_factory=list)
    errors: int = 0
    completed: int = 0

    def add(self, started: float, arrivals: list[float]) -> None:
        self.ttft_s.append(arrivals[0] - started)
        if len(arrivals) > 1:
            self.tpot_s.append((arrivals[-1] - arrivals[0]) / (len(arrivals) - 1))
        self.completed += 1

    def summary_ms(self) -> dict[str, float]:
        return {
            "ttft_p50_ms": percentile(self.ttft_s, 50) * 1000,
            "ttft_p99_ms": percentile(self.ttft_s, 99) * 1000,
            "tpot_p50_ms": percentile(self.tpot_s, 50) * 1000,
            "tpot_p99_ms": percentile(self.tpot_s, 99) * 1000,
            "streams": self.completed,
            "errors": self.errors,
        }


# One stream: returns the start time and each delta's arrival time.
Stream = Callable[[int], Awaitable[tuple[float, list[float]]]]


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Tell me about the river number {i}."}]


def proto_request(i: int, tokens: int) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        messages=[generation_pb2.ChatMessage(**m) for m in messages(i)],
        sampling=generation_pb2.SamplingParams(max_tokens=tokens, ignore_eos=True),
        cache=generation_pb2.CachePolicy(no_cache=True, no_store=True),
    )


async def grpc_stream(call: grpc.aio.UnaryStreamCall) -> tuple[float, list[float]]:
    # Every delta counts, on every path (SSE carries one event per delta).
    started = time.perf_counter()
    arrivals = [time.perf_counter() async for _chunk in call]
    return started, arrivals


async def sse_stream(url: str, body: dict[str, Any]) -> tuple[float, list[float]]:
    # A raw socket client: an HTTP client's own per-event cost (httpx parses
    # and re-buffers every read) would be charged to the gateway, on the same
    # two cores. One connection per stream, opened inside the timing.
    started = time.perf_counter()
    response = await RawHttpResponse.post(url, "/v1/chat/completions", body, headers=NO_CACHE)
    if response.status != 200:
        raise RuntimeError(f"gateway answered {response.status}: {(await response.body())[:200]!r}")
    arrivals = [event.at async for event in response.events() if event.data != "[DONE]"]
    await response.close()
    return started, arrivals


async def closed_loop(stream: Stream, times: StreamTimes, *, concurrency: int, duration_s: float, tokens: int) -> None:
    """`concurrency` callers, each starting a stream when its last one ends,
    for duration_s; results go into `times`."""
    stop_at = time.monotonic() + duration_s
    counter = iter(range(10**9))

    async def caller(index: int) -> None:
        # Staggered starts: streams in steady state, not in lockstep bursts.
        await asyncio.sleep(index * min(STAGGER_S, duration_s / 4) / concurrency)
        while time.monotonic() < stop_at:
            try:
                started, arrivals = await stream(next(counter))
            except Exception:
                times.errors += 1
                await asyncio.sleep(0.05)
                continue
            if len(arrivals) < tokens // 2:
                times.errors += 1
                continue
            times.add(started, arrivals)

    await asyncio.gather(*(caller(index) for index in range(concurrency)))


async def measure(engine: str, *, tokens: int, duration_s: float, levels: tuple[int, ...]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "pools": {"smollm2": {"engine": ENGINES[engine], "workers": 1}},
        "models": {"smollm2": {"default_version": "1", "versions": {"1": {"pool": "smollm2"}}}},
        "limits": {"max_tokens": 4096},
    }
    if engine == "vllm":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        prepare_model("smollm2", default_models_dir(), progress=False)
    with running_mesh(config) as mesh:
        async with (
            mesh.internal_channel(mesh.worker_addresses()[0], Role.WORKER) as worker_channel,
            grpc.aio.insecure_channel(mesh.router_address) as router_channel,
        ):
            worker = worker_pb2_grpc.WorkerStub(worker_channel)
            router = router_pb2_grpc.RouterStub(router_channel)

            async def via_worker(i: int) -> tuple[float, list[float]]:
                request = worker_pb2.WorkerGenerateRequest(
                    request_id=uuid.uuid4().hex, model_version="smollm2@1", request=proto_request(i, tokens)
                )
                return await grpc_stream(worker.Generate(request))

            async def via_router(i: int) -> tuple[float, list[float]]:
                return await grpc_stream(router.GenerateStream(proto_request(i, tokens)))

            async def via_gateway(i: int) -> tuple[float, list[float]]:
                body = {
                    "model": "smollm2",
                    "messages": messages(i),
                    "max_tokens": tokens,
                    "ignore_eos": True,
                    "stream": True,
                }
                return await sse_stream(mesh.http_url, body)

            paths: dict[str, Stream] = dict(zip(PATHS, (via_worker, via_router, via_gateway), strict=True))
            for stream in paths.values():  # warm up: channels, connections, compiled graphs
                await closed_loop(stream, StreamTimes(), concurrency=4, duration_s=min(5.0, duration_s), tokens=tokens)
            results: dict[int, dict[str, StreamTimes]] = {}
            for level in levels:
                results[level] = {name: StreamTimes() for name in paths}
                # The paths take turns, in rounds: a change in the machine's
                # load (it is shared) hits all of them alike.
                turn_s = duration_s / ROUNDS
                for _round in range(ROUNDS):
                    for name, stream in paths.items():
                        times = results[level][name]
                        await closed_loop(stream, times, concurrency=level, duration_s=turn_s, tokens=tokens)
    return {
        str(level): {name: times.summary_ms() for name, times in by_path.items()} for level, by_path in results.items()
    }


def table(engine: str, measured: dict[str, Any], duration_s: float, tokens: int) -> str:
    rows = []
    for level, by_path in measured.items():
        direct = by_path[PATHS[0]]
        for name, s in by_path.items():
            rows.append(
                [
                    level,
                    name,
                    s["ttft_p50_ms"],
                    s["ttft_p99_ms"],
                    s["ttft_p50_ms"] - direct["ttft_p50_ms"],
                    s["tpot_p50_ms"],
                    s["tpot_p99_ms"],
                    s["tpot_p50_ms"] - direct["tpot_p50_ms"],
                    s["streams"] / duration_s,
                    s["errors"],
                ]
            )
    return "\n".join(
        [
            f"## {engine} engine, {tokens} tokens per stream, {duration_s:.0f} s per path and concurrency"
            f" (in {ROUNDS} turns, paths alternating)",
            "",
            markdown_table(
                [
                    "streams",
                    "path",
                    "ttft p50 ms",
                    "ttft p99 ms",
                    "added ttft p50 ms",
                    "per-token p50 ms",
                    "per-token p99 ms",
                    "added per-token p50 ms",
                    "streams/s",
                    "errors",
                ],
                rows,
            ),
        ]
    )


async def run(engines: list[str], tokens: int, duration_s: float, levels: tuple[int, ...]) -> None:
    load_before = os.getloadavg()
    measured = {}
    for engine in engines:
        measured[engine] = await measure(engine, tokens=tokens, duration_s=duration_s, levels=levels)
    load_after = os.getloadavg()
    sections = [
        "# Gateway overhead: TTFT and per-token latency, gateway vs router vs worker",
        "",
        "added = the path's p50 minus the worker's p50 at the same concurrency.",
        f"Load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} cores.",
    ]
    for engine in engines:
        sections += ["", table(engine, measured[engine], duration_s, tokens)]
    write_results(
        "gateway",
        {
            "tokens_per_stream": tokens,
            "duration_s_per_path": duration_s,
            "levels": list(levels),
            "paths": list(PATHS),
            "load_average_1m": {"before": load_before[0], "after": load_after[0]},
            "engines": measured,
        },
        "\n".join(sections),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="vllm,synthetic", help="comma-separated: vllm, synthetic")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per stream")
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per path and concurrency")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="concurrent streams, comma-separated")
    args = parser.parse_args()
    engines = [name.strip() for name in args.engines.split(",") if name.strip()]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines {sorted(unknown)}; known: {sorted(ENGINES)}")
    levels = tuple(int(level) for level in args.levels.split(","))
    asyncio.run(run(engines, args.tokens, args.duration, levels))


if __name__ == "__main__":
    main()
