"""Engines called in-process, without the mesh: the baseline the mesh's
numbers are compared against.

    python bench/engine_inprocess.py vllm [--concurrency 1 16 64] [--max-tokens 64]
    python bench/engine_inprocess.py embeddings [--texts 512] [--concurrency 32]

vllm: engine start time, then for each concurrency N streams that each run
--rounds requests of --max-tokens tokens (ignore_eos, so every request
decodes the same length): tokens/s and time to first token.
embeddings: texts/s for N concurrent single-text calls, batched by the
dynamic batcher and unbatched (max_batch_size 1), on the same texts.

Prints one JSON object per measurement (and a table to stderr). The
functions are reusable: the mesh benchmark calls measure_generation with
a client-backed stream instead of an engine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import percentile
from headrace.models.store import default_models_dir
from headrace.runtime.engine_settings import EmbeddingsEngineSettings, VllmEngineSettings
from services.worker.engines.base import Delta, GenerationRequest, Sampling
from services.worker.engines.embeddings import EmbeddingsEngine

PROMPTS = [
    "Write a short story about a water mill.",
    "Explain how a headrace channel feeds a mill wheel.",
    "List three uses of flowing water in old villages.",
    "Describe a river at dawn in two sentences.",
]


@dataclass(frozen=True)
class GenerationResult:
    concurrency: int
    requests: int
    tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float


@dataclass(frozen=True)
class EmbeddingResult:
    mode: str
    concurrency: int
    texts: int
    wall_s: float
    texts_per_s: float
    model_calls: int


async def measure_generation(
    stream: Callable[[GenerationRequest], AsyncIterator[Delta]],
    *,
    concurrency: int,
    rounds: int,
    max_tokens: int,
) -> GenerationResult:
    """`concurrency` streams, each running `rounds` requests back to back."""
    ttfts: list[float] = []
    tokens = 0

    async def one_stream(index: int) -> None:
        nonlocal tokens
        for round_ in range(rounds):
            request = GenerationRequest(
                request_id=f"bench-{concurrency}-{index}-{round_}-{time.monotonic_ns()}",
                model="bench",
                prompt=PROMPTS[(index + round_) % len(PROMPTS)] + f" (variant {index})",
                sampling=Sampling(max_tokens=max_tokens, ignore_eos=True, temperature=0.0),
            )
            started = time.monotonic()
            first = True
            async for delta in stream(request):
                if first and delta.token_ids:
                    ttfts.append(time.monotonic() - started)
                    first = False
                if delta.finish_reason is not None:
                    tokens += delta.completion_tokens

    started = time.monotonic()
    await asyncio.gather(*(one_stream(i) for i in range(concurrency)))
    wall = time.monotonic() - started
    return GenerationResult(
        concurrency=concurrency,
        requests=concurrency * rounds,
        tokens=tokens,
        wall_s=round(wall, 3),
        tokens_per_s=round(tokens / wall, 1),
        ttft_p50_ms=round(statistics.median(ttfts) * 1000, 1),
        ttft_p95_ms=round(percentile(ttfts, 95) * 1000, 1),
    )


async def measure_embeddings(
    engine: EmbeddingsEngine, texts: list[str], *, concurrency: int, mode: str
) -> EmbeddingResult:
    """`concurrency` callers embed one text per call until `texts` run out."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for text in texts:
        queue.put_nowait(text)

    async def caller() -> None:
        while not queue.empty():
            await engine.embed([queue.get_nowait()])

    before = engine.batcher_stats().batches
    started = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    wall = time.monotonic() - started
    return EmbeddingResult(
        mode=mode,
        concurrency=concurrency,
        texts=len(texts),
        wall_s=round(wall, 3),
        texts_per_s=round(len(texts) / wall, 1),
        model_calls=engine.batcher_stats().batches - before,
    )


async def bench_vllm(args: argparse.Namespace) -> list[dict[str, object]]:
    from services.worker.engines.vllm_engine import VllmEngine

    settings = VllmEngineSettings(
        max_num_seqs=max(args.concurrency),
        cpu_kv_cache_gib=args.kv_cache_gib,
        enforce_eager=args.enforce_eager,
    )
    engine = VllmEngine(settings, models_dir=Path(args.models_dir))
    started = time.monotonic()
    await engine.start()
    results: list[dict[str, object]] = [
        {
            "measure": "vllm_start",
            "seconds": round(time.monotonic() - started, 1),
            "torchinductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR", "default"),
        }
    ]
    try:
        # One request first: the first steps after start are slower.
        await measure_generation(engine.generate, concurrency=1, rounds=1, max_tokens=8)
        for concurrency in args.concurrency:
            result = await measure_generation(
                engine.generate, concurrency=concurrency, rounds=args.rounds, max_tokens=args.max_tokens
            )
            results.append({"measure": "vllm_generation", **asdict(result)})
    finally:
        await engine.close()
    return results


async def bench_embeddings(args: argparse.Namespace) -> list[dict[str, object]]:
    texts = [f"{PROMPTS[i % len(PROMPTS)]} Item {i} of the set." for i in range(args.texts)]
    results: list[dict[str, object]] = []
    modes = {
        "batched": EmbeddingsEngineSettings(max_batch_size=args.max_batch_size, max_queue_delay_ms=args.delay_ms),
        "unbatched": EmbeddingsEngineSettings(max_batch_size=1, max_queue_delay_ms=0),
    }
    for mode, settings in modes.items():
        engine = EmbeddingsEngine(settings)
        await engine.start()
        try:
            await engine.embed(texts[:8])
            result = await measure_embeddings(engine, texts, concurrency=args.concurrency[0], mode=mode)
            results.append({"measure": "embeddings", **asdict(result)})
        finally:
            await engine.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine", choices=["vllm", "embeddings"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=None)
    parser.add_argument("--rounds", type=int, default=2, help="requests per stream (vllm)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--kv-cache-gib", type=int, default=2)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--models-dir", default=os.environ.get("HEADRACE_MODELS_DIR", str(default_models_dir())))
    parser.add_argument("--texts", type=int, default=512, help="texts to embed (embeddings)")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    args = parser.parse_args()
    if args.concurrency is None:
        args.concurrency = [1, 16] if args.engine == "vllm" else [32]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bench = bench_vllm if args.engine == "vllm" else bench_embeddings
    for row in asyncio.run(bench(args)):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    # Guarded: vLLM spawns processes that re-import __main__.
    main()
