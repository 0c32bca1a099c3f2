"""make bench-routing: fast-vs-accurate routing against always-accurate,
on a mixed workload of easy and hard requests (labelled by hand), in one
run, through the whole mesh as processes.

Routes compared, alternating in blocks of the same requests:
  always-accurate   every request to the accurate model
  fast-vs-accurate  the difficulty scorer's default (length + task markers)
  cascade           (--engine vllm) fast first with a smaller token budget;
                    escalated when the answer is cut off or unsure

Reported per route: cost per 1k requests (the cost each answer carries:
engine seconds x the model's price per hour, the cascade's wasted fast
attempts included), how often the cheaper path was taken, how often the
router's choice agreed with the label, latency.

The models, honestly:
  --engine synthetic  two pools of the synthetic engine with the paces of a
      small and a large model on GPUs (see PACES) and their prices. No
      model runs, answers are filler words: this measures the routing and
      the cost accounting, not answer quality. Requests run one at a time,
      so each answer's engine time is its own (the synthetic engine batches
      without slowing down, which would make shared time look free).
  --engine vllm  SmolLM2-135M-Instruct on vLLM (CPU): ONE engine serves both
      model names, priced apart (FAST_PRICE vs ACCURATE_PRICE per hour), so
      "fast" and "accurate" differ in price and, in the cascade, in token
      budget, not in weights. Engine time and answer lengths are real.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc.aio

from bench.harness import markdown_table, percentile, running_mesh, write_results
from headrace.v1 import generation_pb2, router_pb2_grpc

# (prompt, label): easy ones want a short fact, hard ones reasoning, code or
# analysis. Some are worded so that the keyword scorer gets them wrong, as
# real traffic would (an easy "translate", a hard question with no marker).
EASY = [
    "What is the capital of France?",
    "Name a primary color.",
    "How many legs does a spider have?",
    "What is 7 plus 5?",
    "Say good morning in Spanish.",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water in Celsius?",
    "Name a planet in our solar system.",
    "What day comes after Monday?",
    "Give me a synonym for happy.",
    "What is the largest ocean on Earth?",
    "How many minutes are in an hour?",
    "What color are ripe bananas?",
    "Name a mammal that can fly.",
    "What is the opposite of cold?",
    "Which continent is Kenya in?",
    "What is the chemical symbol for gold?",
    "Name a musical instrument with strings.",
    "What language is spoken in Brazil?",
    "How many sides does a triangle have?",
    "Translate 'thank you' into German.",
    "Summarize in one word: the cat sat on the mat.",
    "Is the Sun a star?",
    "What is the freezing point of water in Fahrenheit?",
    "Name a fruit that is yellow.",
    "What is the plural of mouse?",
    "Who painted the Mona Lisa?",
    "What is the square root of 81?",
    "Name a country in South America.",
    "What animal says moo?",
]
HARD = [
    "Explain why the sky is blue, step by step.",
    "Prove that there are infinitely many prime numbers.",
    "Write a function in Python that checks whether a string is a palindrome, and explain its complexity.",
    "Compare TCP and UDP and explain the trade-offs.",
    "Derive the formula for the sum of an arithmetic series.",
    "Analyze the causes of the French Revolution.",
    "Implement binary search in JavaScript and explain each line.",
    "Solve for x: 3x + 7 = 22, showing your reasoning.",
    "Debug this code: for i in range(10) print(i)",
    "Explain why quicksort takes n log n time on average.",
    "Calculate the compound interest on 1000 dollars at 5% for 3 years, step by step.",
    "Write an essay outline on climate change policy.",
    "Refactor this function to be more readable: def f(x): return x*2 if x>0 else -x*2",
    "Describe an algorithm to detect a cycle in a linked list.",
    "What are the trade-offs between microservices and monoliths?",
    "Prove that the square root of 2 is irrational.",
    "Explain why vaccines train the immune system, step by step.",
    "Compare the economic systems of capitalism and socialism.",
    "Implement a stack using two queues and analyze the costs.",
    "Solve the system of equations x + y = 10 and x - y = 2.",
    "What is the integral of x squared times sine of x?",
    "How does public key cryptography let two strangers agree on a secret?",
    "Why do heavy and light objects fall at the same rate in a vacuum?",
    "What would happen to Earth's climate if the Moon disappeared?",
    "How do transformers in machine learning use attention?",
    "Design a schema for a library management system.",
    "Outline a plan to migrate a monolith to microservices.",
    "Write Python code to parse a CSV file and compute column averages.",
    "What is the difference between a process and a thread?",
    "Translate this into French and explain the grammar: The weather is nice today.",
]

# Completion budgets the clients ask for.
EASY_MAX_TOKENS = 24
HARD_MAX_TOKENS = 64
# The cascade's fast attempt gets this budget; cut off there, it escalates.
CASCADE_FAST_MAX_TOKENS = 32

# Synthetic paces: a small model on one GPU vs a large one on four
# (per-stream decode speed and time to first token), and their prices.
PACES = {
    "fast": {"ttft_ms": 25.0, "tokens_per_s": 150.0, "price_per_hour": 3.0},
    "accurate": {"ttft_ms": 100.0, "tokens_per_s": 40.0, "price_per_hour": 12.0},
}
# vLLM: one SmolLM2 engine, two prices.
FAST_PRICE = 3.0
ACCURATE_PRICE = 12.0


@dataclass(frozen=True)
class Job:
    prompt: str
    hard: bool


@dataclass
class Result:
    job: Job
    model: str = ""
    reason: str = ""
    cost_usd: float = 0.0
    total_s: float = 0.0
    ttft_ms: float = 0.0
    tokens: int = 0
    error: str = ""


@dataclass
class RouteRun:
    results: list[Result] = field(default_factory=list)


def workload(requests: int, hard_share: float, seed: int) -> list[Job]:
    rng = random.Random(seed)
    hard_count = round(requests * hard_share)
    jobs = [Job(HARD[i % len(HARD)], True) for i in range(hard_count)]
    jobs += [Job(EASY[i % len(EASY)], False) for i in range(requests - hard_count)]
    rng.shuffle(jobs)
    return jobs


def mesh_config(engine: str) -> dict[str, Any]:
    route_auto = {"kind": "fast_accurate", "fast": "fast", "accurate": "accurate"}
    routes: dict[str, Any] = {"auto": {"policies": [route_auto]}}
    aliases = {"auto": "accurate"}
    if engine == "synthetic":
        pools = {
            name: {
                "engine": {
                    "kind": "synthetic",
                    "ttft_ms": pace["ttft_ms"],
                    "tokens_per_s": pace["tokens_per_s"],
                    "max_concurrency": 64,
                },
                "workers": 1,
                "price_per_hour": pace["price_per_hour"],
            }
            for name, pace in PACES.items()
        }
        models = {name: {"default_version": "1", "versions": {"1": {"pool": name}}} for name in ("fast", "accurate")}
    else:
        pools = {
            "smollm2": {
                "engine": {"kind": "vllm", "max_num_seqs": 16, "max_model_len": 1024, "cpu_kv_cache_gib": 1},
                "workers": 1,
                "price_per_hour": ACCURATE_PRICE,
            }
        }
        models = {
            "fast": {"default_version": "1", "versions": {"1": {"pool": "smollm2", "price_per_hour": FAST_PRICE}}},
            "accurate": {"default_version": "1", "versions": {"1": {"pool": "smollm2"}}},
        }
        routes["cascade"] = {"policies": [{**route_auto, "cascade": {"fast_max_tokens": CASCADE_FAST_MAX_TOKENS}}]}
        aliases["cascade"] = "accurate"
    return {
        "pools": pools,
        "models": models,
        "aliases": aliases,
        "default_model": "accurate",
        "routing": {"routes": routes},
        # Every request must reach a model: no cache.
        "cache": {"enabled": False},
    }


def request(job: Job, model: str) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        model=model,
        messages=[generation_pb2.ChatMessage(role="user", content=job.prompt)],
        sampling=generation_pb2.SamplingParams(
            temperature=0.0, max_tokens=HARD_MAX_TOKENS if job.hard else EASY_MAX_TOKENS
        ),
        cache=generation_pb2.CachePolicy(no_cache=True, no_store=True),
    )


async def run_block(
    stub: router_pb2_grpc.RouterStub, route: str, jobs: list[Job], concurrency: int, into: RouteRun
) -> None:
    slots = asyncio.Semaphore(concurrency)

    async def one(job: Job) -> None:
        async with slots:
            started = time.perf_counter()
            result = Result(job=job)
            try:
                answer = await stub.Generate(request(job, route), timeout=300)
                result.model = answer.model
                result.reason = answer.route.reason
                result.cost_usd = answer.cost.usd
                result.ttft_ms = answer.timing.ttft_ms
                result.tokens = answer.usage.completion_tokens
            except grpc.aio.AioRpcError as exc:
                result.error = exc.code().name
            result.total_s = time.perf_counter() - started
            into.results.append(result)

    await asyncio.gather(*(one(job) for job in jobs))


def summarize(run: RouteRun) -> dict[str, Any]:
    ok = [r for r in run.results if not r.error]
    easy = [r for r in ok if not r.job.hard]
    hard = [r for r in ok if r.job.hard]
    tried_fast = [r for r in ok if ",fast" in r.reason]
    escalated = [r for r in ok if "cascade-escalated" in r.reason]
    answered_fast = [r for r in ok if r.model.startswith("fast@")]
    total_cost = sum(r.cost_usd for r in ok)
    return {
        "requests": len(run.results),
        "errors": len(run.results) - len(ok),
        "cost_per_1k_usd": 1000.0 * total_cost / len(ok) if ok else float("nan"),
        "fast_tried_share": len(tried_fast) / len(ok) if ok else 0.0,
        "answered_by_fast_share": len(answered_fast) / len(ok) if ok else 0.0,
        "escalated_share": len(escalated) / len(ok) if ok else 0.0,
        # Agreement of the first choice with the labels.
        "easy_sent_fast": sum(1 for r in easy if ",fast" in r.reason) / len(easy) if easy else 0.0,
        "hard_sent_accurate": sum(1 for r in hard if ",fast" not in r.reason) / len(hard) if hard else 0.0,
        # Of the fast tries, how many were escalated: easy ones (wasted) and
        # hard ones the scorer had misjudged (caught).
        "easy_fast_escalated": _share(r for r in easy if ",fast" in r.reason),
        "hard_fast_escalated": _share(r for r in hard if ",fast" in r.reason),
        "mean_completion_tokens": statistics.fmean(r.tokens for r in ok) if ok else 0.0,
        "ttft_p50_ms": percentile([r.ttft_ms for r in ok], 50),
        "total_p50_ms": percentile([r.total_s for r in ok], 50) * 1000,
        "total_p95_ms": percentile([r.total_s for r in ok], 95) * 1000,
    }


def _share(tried: Iterable[Result]) -> str:
    results = list(tried)
    escalated = sum(1 for r in results if "cascade-escalated" in r.reason)
    return f"{escalated}/{len(results)}"


async def run(engine: str, requests: int, hard_share: float, concurrency: int, seed: int) -> None:
    routes = {"always-accurate": "accurate", "fast-vs-accurate": "auto"}
    if engine == "vllm":
        routes["cascade"] = "cascade"
    jobs = workload(requests, hard_share, seed)
    runs = {name: RouteRun() for name in routes}
    with running_mesh(mesh_config(engine)) as mesh:
        async with grpc.aio.insecure_channel(mesh.router_address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            # Warm up every path (channels, engine compile caches).
            for model in routes.values():
                await run_block(stub, model, jobs[:2], 1, RouteRun())
            started = time.monotonic()
            # The same requests through each route, alternating in blocks so
            # drift (a busy machine) hits every route alike.
            block = 10
            for start in range(0, len(jobs), block):
                for name, model in routes.items():
                    await run_block(stub, model, jobs[start : start + block], concurrency, runs[name])
            elapsed = time.monotonic() - started
    summaries = {name: summarize(r) for name, r in runs.items()}
    baseline = summaries["always-accurate"]["cost_per_1k_usd"]
    rows = []
    for name, s in summaries.items():
        rows.append(
            [
                name,
                s["cost_per_1k_usd"],
                s["cost_per_1k_usd"] / baseline if baseline else float("nan"),
                f"{s['fast_tried_share']:.0%}",
                f"{s['answered_by_fast_share']:.0%}",
                f"{s['escalated_share']:.0%} ({s['easy_fast_escalated']} easy, {s['hard_fast_escalated']} hard)",
                f"{s['easy_sent_fast']:.0%} / {s['hard_sent_accurate']:.0%}",
                s["mean_completion_tokens"],
                s["ttft_p50_ms"],
                s["total_p50_ms"],
                s["total_p95_ms"],
                s["errors"],
            ]
        )
    hard_count = sum(1 for j in jobs if j.hard)
    what = (
        "synthetic engine at small/large-model paces "
        f"(fast {PACES['fast']['ttft_ms']:g} ms TTFT, {PACES['fast']['tokens_per_s']:g} tok/s, "
        f"{PACES['fast']['price_per_hour']:g} USD/h; accurate {PACES['accurate']['ttft_ms']:g} ms, "
        f"{PACES['accurate']['tokens_per_s']:g} tok/s, {PACES['accurate']['price_per_hour']:g} USD/h)"
        if engine == "synthetic"
        else f"SmolLM2-135M on vLLM (CPU), one engine for both names: fast {FAST_PRICE:g} USD/h, "
        f"accurate {ACCURATE_PRICE:g} USD/h; cascade fast budget {CASCADE_FAST_MAX_TOKENS} tokens"
    )
    table = "\n".join(
        [
            f"## Fast-vs-accurate routing ({engine})",
            "",
            f"{len(jobs)} requests per route ({hard_count} hard, {len(jobs) - hard_count} easy; max_tokens "
            f"{HARD_MAX_TOKENS} / {EASY_MAX_TOKENS}), {concurrency} at a time, {elapsed:.0f} s in all. {what}.",
            "",
            markdown_table(
                [
                    "route",
                    "USD per 1k requests",
                    "vs always-accurate",
                    "fast tried",
                    "answered by fast",
                    "escalated (of fast tries)",
                    "easy->fast / hard->accurate",
                    "mean tokens",
                    "ttft p50 ms",
                    "total p50 ms",
                    "total p95 ms",
                    "errors",
                ],
                rows,
            ),
        ]
    )
    write_results(
        f"routing-{engine}",
        {
            "engine": engine,
            "requests_per_route": len(jobs),
            "hard_requests": hard_count,
            "concurrency": concurrency,
            "seed": seed,
            "models": what,
            "routes": summaries,
        },
        table,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("synthetic", "vllm"), default="synthetic")
    parser.add_argument("--requests", type=int, default=60, help="requests per route")
    parser.add_argument("--hard-share", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=None, help="default: 1 (synthetic, see above) or 4 (vllm)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    concurrency = args.concurrency or (1 if args.engine == "synthetic" else 4)
    asyncio.run(run(args.engine, args.requests, args.hard_share, concurrency, args.seed))


if __name__ == "__main__":
    main()
