"""make bench-quant: SmolLM2-135M-Instruct in bf16 (the prepared `smollm2`,
served as smollm2@1) against its int8 W8A8 variant (`smollm2-w8a8`, served
as smollm2@q8), side by side in one run, both through the worker's own
vLLM engine class (VllmEngine), on this CPU.

Quality, on fixed data shipped in bench/data:
- greedy answers to the 40 chat prompts of quant-prompts.txt: share of
  answers identical token for token, and the token-level agreement (the
  share of the bf16 answer's tokens that the int8 model, fed the same
  prefix, also ranks first: teacher-forced, so one early difference does
  not count every later token as a disagreement). The same measures for
  bf16 against itself, run again in another batch order, give the noise
  floor (batched CPU arithmetic is not bit-identical across batch shapes);
- perplexity of each variant on the held text quant-heldout.txt (from
  vLLM's prompt logprobs, one paragraph per request).
Speed and cost: tokens/s at 1 and 16 concurrent streams (every request
decodes --max-tokens tokens, ignore_eos), each level measured --reps times,
alternating between the two engines (which goes first alternates too) so
that both see the same background load; cost per 1M generated tokens at the pool's price per hour.

Both engines stay loaded for the whole run (about 2 x 3 GB), each may use
every core; only one runs at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.engine_inprocess import GenerationResult, measure_generation
from bench.harness import markdown_table, write_results
from headrace.models.store import default_models_dir, prepare_model
from headrace.runtime.config import DEFAULT_PRICE_PER_HOUR
from headrace.runtime.engine_settings import VllmEngineSettings
from services.worker.engines.base import ChatTurn, GenerationRequest, Sampling

DATA = Path(__file__).resolve().parent / "data"
PROMPTS_FILE = DATA / "quant-prompts.txt"
HELDOUT_FILE = DATA / "quant-heldout.txt"
# Label -> (prepared model, the model version it is served as in examples/quantized.yaml).
VARIANTS = {"bf16": ("smollm2", "smollm2@1"), "int8 W8A8": ("smollm2-w8a8", "smollm2@q8")}
REFERENCE = "bf16"


def load_prompts(path: Path = PROMPTS_FILE) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def load_paragraphs(path: Path = HELDOUT_FILE) -> list[str]:
    return [p.strip() for p in path.read_text().split("\n\n") if p.strip()]


@dataclass(frozen=True)
class Agreement:
    answers: int
    # Share of answers identical token for token.
    exact_match: float
    # Share of the reference answers' tokens the other model ranks first
    # after the same prefix (teacher-forced).
    token_agreement: float
    # Share of the reference answers' tokens before the first difference.
    prefix_agreement: float


def agreement(reference: list[list[int]], other: list[list[int]], ranks: list[list[int]]) -> Agreement:
    """`ranks[i]`: the other model's rank of each token of reference[i]."""
    exact = sum(a == b for a, b in zip(reference, other, strict=True))
    ref_tokens = sum(len(a) for a in reference)
    first_choice = sum(sum(1 for r in answer_ranks if r == 1) for answer_ranks in ranks)
    prefix = 0
    for a, b in zip(reference, other, strict=True):
        common = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            common += 1
        prefix += common
    return Agreement(
        answers=len(reference),
        exact_match=round(exact / len(reference), 4),
        token_agreement=round(first_choice / max(ref_tokens, 1), 4),
        prefix_agreement=round(prefix / max(ref_tokens, 1), 4),
    )


def cost_per_million_tokens(price_per_hour: float, tokens_per_s: float) -> float:
    return price_per_hour / 3600 / tokens_per_s * 1e6


def _chat(prompt: str, index: int, tag: str, max_tokens: int) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"quant-{tag}-{index}-{time.monotonic_ns()}",
        model="bench",
        prompt=None,
        messages=(ChatTurn(role="user", content=prompt),),
        sampling=Sampling(max_tokens=max_tokens, temperature=0.0),
    )


@dataclass(frozen=True)
class Answer:
    token_ids: list[int]
    text: str


async def greedy_answers(engine: Any, prompts: list[str], *, max_tokens: int, reverse: bool = False) -> list[Answer]:
    """Every prompt at once (one batch), greedy; `reverse` submits them in
    the opposite order, so the batch is laid out differently."""

    async def one(index: int) -> Answer:
        tokens: list[int] = []
        text: list[str] = []
        async for delta in engine.generate(_chat(prompts[index], index, "greedy", max_tokens)):
            tokens.extend(delta.token_ids)
            text.append(delta.text)
        return Answer(tokens, "".join(text))

    order = list(range(len(prompts)))
    if reverse:
        order.reverse()
    answers = dict(zip(order, await asyncio.gather(*(one(i) for i in order)), strict=True))
    return [answers[i] for i in range(len(prompts))]


async def ranks_of(engine: Any, prompts: list[str], answers: list[list[int]]) -> list[list[int]]:
    """The engine's rank of each token of each answer, after the prompt and
    the answer's tokens before it."""
    scored: list[list[int]] = []
    for index, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        if not answer:
            scored.append([])
            continue
        scores = await engine.score(_chat(prompt, index, "rank", 1), continuation=answer)
        scored.append([s.rank for s in scores])
    return scored


async def perplexity(engine: Any, paragraphs: list[str]) -> tuple[float, int]:
    total = 0.0
    count = 0
    for index, paragraph in enumerate(paragraphs):
        request = GenerationRequest(
            request_id=f"quant-ppl-{index}-{time.monotonic_ns()}", model="bench", prompt=paragraph, sampling=Sampling()
        )
        scores = await engine.score(request)
        total += sum(s.logprob for s in scores)
        count += len(scores)
    return math.exp(-total / count), count


def folder_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6, 1)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from services.worker.engines.vllm_engine import VllmEngine

    models_dir = Path(args.models_dir)
    prompts = load_prompts()
    paragraphs = load_paragraphs()
    levels = [1, 16]
    load_before = round(os.getloadavg()[0], 2)
    engines: dict[str, VllmEngine] = {}
    info: dict[str, dict[str, Any]] = {}
    try:
        for label, (prepared, served_as) in VARIANTS.items():
            folder = prepare_model(prepared, models_dir, progress=False).path
            settings = VllmEngineSettings(
                prepared_model=prepared, max_model_len=2048, max_num_seqs=64, cpu_kv_cache_gib=args.kv_cache_gib
            )
            engine = VllmEngine(settings, models_dir=models_dir)
            started = time.monotonic()
            await engine.start()
            engines[label] = engine
            info[label] = {
                "prepared_model": prepared,
                "served_as": served_as,
                "folder_mb": folder_mb(folder),
                "start_s": round(time.monotonic() - started, 1),
            }
            print(f"{label}: started in {info[label]['start_s']} s", flush=True)
            # The first steps after a start are slower.
            await measure_generation(engine.generate, concurrency=1, rounds=1, max_tokens=8)

        print("quality: greedy answers, ranks, perplexity", flush=True)
        answers = {
            label: await greedy_answers(e, prompts, max_tokens=args.answer_tokens) for label, e in engines.items()
        }
        rerun = await greedy_answers(engines[REFERENCE], prompts, max_tokens=args.answer_tokens, reverse=True)
        reference = [a.token_ids for a in answers[REFERENCE]]
        quality: dict[str, dict[str, Any]] = {}
        for label, engine in engines.items():
            ranks = await ranks_of(engine, prompts, reference)
            ppl, scored_tokens = await perplexity(engine, paragraphs)
            other = answers[label] if label != REFERENCE else rerun
            quality[label] = {
                **asdict(agreement(reference, [a.token_ids for a in other], ranks)),
                "perplexity": round(ppl, 3),
                "perplexity_tokens": scored_tokens,
                "mean_answer_tokens": round(statistics.mean(len(a.token_ids) for a in answers[label]), 1),
            }
        examples = [
            {"prompt": prompts[i], **{label: answers[label][i].text for label in engines}}
            for i in range(min(args.examples, len(prompts)))
        ]

        print("throughput", flush=True)
        samples: dict[str, dict[int, list[GenerationResult]]] = {label: {n: [] for n in levels} for label in engines}
        for rep in range(args.reps):
            # Each engine goes first in every other rep.
            order = list(engines.items())
            for label, engine in order if rep % 2 == 0 else reversed(order):
                for n in levels:
                    result = await measure_generation(
                        engine.generate, concurrency=n, rounds=args.rounds, max_tokens=args.max_tokens
                    )
                    samples[label][n].append(result)
                    print(f"  rep {rep + 1} {label} x{n}: {result.tokens_per_s} tokens/s", flush=True)
    finally:
        for engine in engines.values():
            await engine.close()

    speed: dict[str, dict[str, Any]] = {}
    for label in samples:
        speed[label] = {}
        for n in levels:
            rates = [r.tokens_per_s for r in samples[label][n]]
            median = statistics.median(rates)
            speed[label][str(n)] = {
                "tokens_per_s_median": round(median, 1),
                "tokens_per_s_all": rates,
                "ttft_p50_ms_median": round(statistics.median(r.ttft_p50_ms for r in samples[label][n]), 1),
                "usd_per_million_tokens": round(cost_per_million_tokens(args.price_per_hour, median), 4),
            }
            # Paired within a rep (the two engines measured back to back, under
            # about the same background load): steadier than a ratio of medians.
            reference_rates = [r.tokens_per_s for r in samples[REFERENCE][n]]
            paired = [round(a / b, 3) for a, b in zip(rates, reference_rates, strict=True)]
            speed[label][str(n)]["vs_reference_per_rep"] = paired
            speed[label][str(n)]["vs_reference_median"] = round(statistics.median(paired), 3)
    return {
        "variants": info,
        "quality": quality,
        "speed": speed,
        "examples": examples,
        "settings": {
            "prompts": len(prompts),
            "answer_tokens": args.answer_tokens,
            "heldout_paragraphs": len(paragraphs),
            "reps": args.reps,
            "rounds": args.rounds,
            "max_tokens": args.max_tokens,
            "price_per_hour": args.price_per_hour,
            "shared_machine_note": args.note,
            "load_average_1m_before_after": [load_before, round(os.getloadavg()[0], 2)],
        },
    }


def report(results: dict[str, Any]) -> str:
    quality, speed, info = results["quality"], results["speed"], results["variants"]
    labels = list(info)
    lines = [
        "# bench-quant: SmolLM2-135M-Instruct, bf16 vs int8 W8A8 (vLLM on this CPU)",
        "",
        f"One run, {results.get('when', time.strftime('%Y-%m-%dT%H:%M:%S%z'))}, {os.cpu_count()} CPUs; "
        f"{results['settings']['shared_machine_note']}",
        "",
        *_summary(results),
        "",
        "## Quality (greedy answers to bench/data/quant-prompts.txt; perplexity on bench/data/quant-heldout.txt)",
        "",
        markdown_table(
            ["version", "served as", "exact match", "token agreement", "prefix agreement", "perplexity"],
            [
                [
                    label + (" (rerun, other batch order)" if label == REFERENCE else ""),
                    info[label]["served_as"],
                    f"{quality[label]['exact_match']:.1%}",
                    f"{quality[label]['token_agreement']:.1%}",
                    f"{quality[label]['prefix_agreement']:.1%}",
                    f"{quality[label]['perplexity']:.2f}",
                ]
                for label in labels
            ],
        ),
        "",
        "Agreement is with the bf16 answers of the same run. Token agreement: share of the bf16 answers' "
        "tokens that the version ranks first after the same prefix (teacher-forced). Prefix agreement: share "
        "before the first differing token. The bf16 row compares bf16 with itself run again in another batch "
        "order: the noise floor of batched CPU arithmetic.",
        "",
        "## Speed and cost (tokens/s, median of the reps; every request decodes the same length)",
        "",
        markdown_table(
            [
                "version",
                "folder MB",
                "start s",
                "x1 tok/s",
                "x16 tok/s",
                "x1 vs bf16",
                "x16 vs bf16",
                "USD / 1M tok (x1)",
                "USD / 1M tok (x16)",
            ],
            [
                [
                    label,
                    info[label]["folder_mb"],
                    info[label]["start_s"],
                    speed[label]["1"]["tokens_per_s_median"],
                    speed[label]["16"]["tokens_per_s_median"],
                    _ratio(speed[label]["1"]),
                    _ratio(speed[label]["16"]),
                    f"{speed[label]['1']['usd_per_million_tokens']:.4f}",
                    f"{speed[label]['16']['usd_per_million_tokens']:.4f}",
                ]
                for label in labels
            ],
        ),
        "",
        "Ratios: median over the reps of each rep's ratio (the two engines measured back to back), "
        "with every rep's in brackets. "
        f"Cost: price per hour {results['settings']['price_per_hour']} USD (one worker's share of a 2-vCPU "
        "machine) / (tokens/s x 3600) x 1e6. Load average (1 min) before and after the run: "
        f"{results['settings']['load_average_1m_before_after']}.",
    ]
    return "\n".join(lines)


def _summary(results: dict[str, Any]) -> list[str]:
    """One line per non-reference version: speed, cost and quality against bf16."""
    quality, speed = results["quality"], results["speed"]
    ref_q, ref_s = quality[REFERENCE], speed[REFERENCE]
    lines = []
    for label in results["variants"]:
        if label == REFERENCE:
            continue
        q, s = quality[label], speed[label]
        cost = s["16"]["usd_per_million_tokens"] / ref_s["16"]["usd_per_million_tokens"] - 1
        ppl = q["perplexity"] / ref_q["perplexity"] - 1
        lines.append(
            f"- **{label}** against bf16: {s['1']['vs_reference_median']:.2f}x the tokens/s at 1 stream and "
            f"{s['16']['vs_reference_median']:.2f}x at 16; cost per token {cost:+.0%} at 16 streams; "
            f"perplexity {ppl:+.1%}; {q['exact_match']:.0%} of greedy answers identical "
            f"(bf16 against itself: {ref_q['exact_match']:.0%}), {q['token_agreement']:.1%} of bf16's answer "
            f"tokens also its first choice (bf16 itself: {ref_q['token_agreement']:.1%})."
        )
    return lines


def _ratio(level: dict[str, Any]) -> str:
    reps = ", ".join(f"{r:.2f}" for r in level["vs_reference_per_rep"])
    return f"{level['vs_reference_median']:.2f}x [{reps}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", default=os.environ.get("HEADRACE_MODELS_DIR", str(default_models_dir())))
    parser.add_argument("--answer-tokens", type=int, default=48, help="greedy answer length cap")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per request in the speed part")
    parser.add_argument("--rounds", type=int, default=2, help="requests per stream in the speed part")
    parser.add_argument("--reps", type=int, default=3, help="speed measurements per level and version")
    parser.add_argument("--kv-cache-gib", type=int, default=1)
    parser.add_argument("--price-per-hour", type=float, default=DEFAULT_PRICE_PER_HOUR)
    parser.add_argument("--examples", type=int, default=6, help="answers shown side by side in the JSON")
    parser.add_argument("--note", default="machine shared with other work: compare the ratios, not the absolutes.")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    write_results("quant", results, report(results))


if __name__ == "__main__":
    main()
