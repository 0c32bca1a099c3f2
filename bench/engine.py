"""make bench-engine: a real model through the mesh, against the same engine
in-process, against a naive deploy.

1. vLLM (SmolLM2-135M-Instruct on this CPU) called in-process, then the
   same engine settings behind the whole mesh (router -> scheduler ->
   worker, gRPC streaming), at 1, 16 and 64 concurrent streams: tokens/s
   and time to first token, side by side.
2. The naive baseline the mission statement warns about: plain transformers
   (bf16, the same prepared model), one request at a time, on the same
   prompts and completion length; against Headrace at 64 streams. Both are
   priced at the same machine price per hour: cost per 1,000 requests, and
   the ratio.

Every request decodes exactly --max-tokens tokens (ignore_eos / min_new_tokens),
so the comparison counts the same work. The engines run one after the
other (two vLLM engines would fight over the same cores).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.engine_inprocess import PROMPTS, GenerationResult, measure_generation
from bench.harness import markdown_table, running_mesh, write_results
from headrace.client import AsyncHeadraceClient
from headrace.models.store import default_models_dir, prepare_model
from headrace.runtime.config import DEFAULT_PRICE_PER_HOUR
from headrace.runtime.engine_settings import VllmEngineSettings
from headrace.v1 import generation_pb2
from services.worker.engines.base import Delta, FinishReason, GenerationRequest


def engine_settings(max_num_seqs: int) -> VllmEngineSettings:
    return VllmEngineSettings(max_num_seqs=max_num_seqs, cpu_kv_cache_gib=2)


async def in_process(models_dir: Path, levels: list[int], rounds: int, max_tokens: int) -> list[GenerationResult]:
    from services.worker.engines.vllm_engine import VllmEngine

    engine = VllmEngine(engine_settings(max(levels)), models_dir=models_dir)
    await engine.start()
    try:
        await measure_generation(engine.generate, concurrency=1, rounds=1, max_tokens=8)  # warm-up
        return [
            await measure_generation(engine.generate, concurrency=n, rounds=rounds, max_tokens=max_tokens)
            for n in levels
        ]
    finally:
        await engine.close()


def mesh_config(max_num_seqs: int) -> dict[str, Any]:
    return {
        "pools": {
            "smollm2": {
                "engine": engine_settings(max_num_seqs).model_dump(),
                "workers": 1,
                "price_per_hour": DEFAULT_PRICE_PER_HOUR,
            }
        },
        "models": {"smollm2": {"default_version": "1", "versions": {"1": {"pool": "smollm2"}}}},
        "default_embedding_model": "",
        # The semantic cache's model would compete for the same cores.
        "cache": {"semantic": {"enabled": False}},
        "gateway": {"enabled": False},
    }


async def through_mesh(levels: list[int], rounds: int, max_tokens: int) -> list[GenerationResult]:
    with running_mesh(mesh_config(max(levels))) as mesh:
        async with AsyncHeadraceClient(mesh.router_address, timeout=600) as client:

            async def stream(request: GenerationRequest) -> Any:
                async for chunk in client.generate_stream_request(
                    generation_pb2.GenerateRequest(
                        prompt=request.prompt or "",
                        sampling=generation_pb2.SamplingParams(
                            max_tokens=request.sampling.max_tokens or max_tokens, temperature=0.0, ignore_eos=True
                        ),
                        # Every request reaches the engine.
                        cache=generation_pb2.CachePolicy(no_cache=True, no_store=True),
                    )
                ):
                    yield Delta(
                        text=chunk.text,
                        token_ids=tuple(chunk.token_ids),
                        finish_reason=FinishReason.LENGTH if chunk.finish_reason else None,
                        completion_tokens=chunk.usage.completion_tokens,
                    )

            await measure_generation(stream, concurrency=1, rounds=1, max_tokens=8)  # warm-up
            return [
                await measure_generation(stream, concurrency=n, rounds=rounds, max_tokens=max_tokens) for n in levels
            ]


def naive_transformers(models_dir: Path, requests: int, max_tokens: int) -> dict[str, float]:
    """One request at a time on plain transformers: what a naive deploy does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    path = str(models_dir / "smollm2")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    # Any: transformers types generate() as returning several output kinds.
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, local_files_only=True)
    model.eval()
    tokens = 0
    latencies = []
    started = time.monotonic()
    for i in range(requests):
        prompt = PROMPTS[i % len(PROMPTS)] + f" (variant {i})"
        inputs = tokenizer(prompt, return_tensors="pt")
        t0 = time.monotonic()
        with torch.inference_mode():
            output = model.generate(
                **inputs, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False, pad_token_id=0
            )
        latencies.append(time.monotonic() - t0)
        tokens += int(output.shape[1] - inputs["input_ids"].shape[1])
    wall = time.monotonic() - started
    return {"requests": requests, "tokens": tokens, "wall_s": wall, "requests_per_s": requests / wall}


def cost_per_1k(requests_per_s: float, price_per_hour: float) -> float:
    """The machine's price for the time 1,000 requests take at this throughput."""
    return 1000.0 / requests_per_s / 3600.0 * price_per_hour


async def run(args: argparse.Namespace) -> None:
    models_dir = Path(args.models_dir)
    prepare_model("smollm2", models_dir, progress=False)
    levels = args.concurrency
    print("in-process vLLM ...", flush=True)
    direct = await in_process(models_dir, levels, args.rounds, args.max_tokens)
    print("vLLM through the mesh ...", flush=True)
    meshed = await through_mesh(levels, args.rounds, args.max_tokens)
    print("naive transformers, one request at a time ...", flush=True)
    naive = naive_transformers(models_dir, args.naive_requests, args.max_tokens)

    rows = []
    for d, m in zip(direct, meshed, strict=True):
        rows.append(
            [
                d.concurrency,
                d.tokens_per_s,
                m.tokens_per_s,
                m.tokens_per_s / d.tokens_per_s,
                d.ttft_p50_ms,
                m.ttft_p50_ms,
                d.ttft_p95_ms,
                m.ttft_p95_ms,
            ]
        )
    best = meshed[-1]
    headrace_rps = best.requests / best.wall_s
    price = args.price_per_hour
    naive_cost = cost_per_1k(naive["requests_per_s"], price)
    headrace_cost = cost_per_1k(headrace_rps, price)
    table = "\n".join(
        [
            f"## vLLM (SmolLM2-135M, CPU): in-process vs through the mesh ({args.max_tokens} tokens per request)",
            "",
            markdown_table(
                [
                    "streams",
                    "in-process tok/s",
                    "mesh tok/s",
                    "mesh/in-process",
                    "in-process TTFT p50 ms",
                    "mesh TTFT p50 ms",
                    "in-process TTFT p95 ms",
                    "mesh TTFT p95 ms",
                ],
                rows,
            ),
            "",
            f"## Naive deploy vs Headrace (same prompts, {args.max_tokens} tokens each, {price} USD/hour)",
            "",
            markdown_table(
                ["deploy", "requests/s", "USD per 1,000 requests"],
                [
                    ["transformers bf16, one request at a time", naive["requests_per_s"], f"{naive_cost:.5f}"],
                    [f"Headrace (vLLM, {best.concurrency} streams)", headrace_rps, f"{headrace_cost:.5f}"],
                ],
            ),
            "",
            f"The naive deploy costs {naive_cost / headrace_cost:.1f}x as much per request.",
        ]
    )
    write_results(
        "engine",
        {
            "max_tokens": args.max_tokens,
            "in_process": [asdict(r) for r in direct],
            "through_mesh": [asdict(r) for r in meshed],
            "naive_transformers": naive,
            "price_per_hour": price,
            "cost_per_1k_requests": {"naive": naive_cost, "headrace": headrace_cost},
            "naive_over_headrace": naive_cost / headrace_cost,
        },
        table,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=2, help="requests per stream")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--naive-requests", type=int, default=24)
    parser.add_argument("--price-per-hour", type=float, default=DEFAULT_PRICE_PER_HOUR)
    parser.add_argument("--models-dir", default=os.environ.get("HEADRACE_MODELS_DIR", str(default_models_dir())))
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
