"""make bench-cost: the cost waterfall. One generated trace (headrace
bench trace: Poisson arrivals, a middle share of repeats and paraphrases,
short and long prompts, an online and a batch part), replayed against one
configuration after another, each adding one lever:

    (a) naive      transformers bf16, one request at a time, no cache, one model
    (b) batching   the mesh on vLLM (continuous batching), cache off, smollm2@1
    (c) + cache    exact and semantic cache, as the shipped `serve` setting allows
    (d) + routing  fast-vs-accurate between smollm2@q8 (int8) and smollm2@1
    (e) + batch    the batch part through the batch lane (OpenAI Batch jobs,
                   lower priority) instead of online

(b)-(e) run on one mesh (two vLLM pools, one core each, as
examples/quantized.yaml); between (c), (d) and (e) the response cache's
Redis keys are deleted so that each starts cold. (a) replays nothing live:
its service times are measured one request at a time and the online part's
TTFT is what a single server taking requests in arrival order would give
(a queue simulation on the measured times).

Cost per 1,000 requests (every configuration, the same formula):

    USD / 1k = worker-seconds x cores per worker x price per core-hour / 3600 x 1000 / requests in the trace

worker-seconds are the engine's busy seconds (one or more sequences in it):
for the mesh the workers' own counter (headrace_worker_busy_seconds_total,
read before and after each replay, online and batch rows together); for
the naive deploy the sum of its generate() calls (one at a time, so busy
time is service time; it is sized as exactly the busy time it needs, its
most favourable case). A mesh worker is one core (cpu_threads_bind); the
naive deploy uses both cores (torch threads = 2) and pays for two. Idle
time is charged to nobody. The token-share cost the mesh reports per
answer (usage cost_usd, online part) is shown beside it.

The machine's speed: (a) runs for minutes before the mesh does, on a host
whose speed drifts. A fixed probe shaped like (a)'s decode is timed every
25 of (a)'s requests, before the mesh starts and after it stops; the
verdict says when the two sides differ by more than 10% (speed_drift).

Quality guard: greedy (temperature 0) answers of each configuration
compared with the naive deploy's, exact text: the share that differ.
Batched CPU arithmetic alone changes some greedy answers (bench-quant: bf16
against itself 60% identical), so (b)'s share is the noise floor, and the
int8 version's answers differ more.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import os
import socket
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import redis

from bench.harness import (
    RESULTS_DIR,
    MeshUnderTest,
    markdown_table,
    process_group_cpu_s,
    running_mesh,
    write_results,
)
from headrace.client import AsyncHeadraceClient
from headrace.models.store import default_models_dir, prepare_model
from headrace.runtime.config import DEFAULT_PRICE_PER_HOUR, AutoscaleSettings
from headrace.workload.generate import WorkloadShape, generate
from headrace.workload.replay import Outcome, Replayer, ReplayResult
from headrace.workload.report import percentile
from headrace.workload.trace import TraceRecord, write_trace

# One worker is one core (cpu_threads_bind), priced as the pools price it.
PRICE_PER_CORE_HOUR = DEFAULT_PRICE_PER_HOUR
NAIVE_CORES = 2
TTFT_SLO_S = AutoscaleSettings().ttft_slo_s
TARGET_RATIO = 30.0
STAGES = {
    "a": "(a) naive: transformers, one at a time",
    "b": "(b) + continuous batching (vLLM)",
    "c": "(c) + exact & semantic cache",
    "d": "(d) + routing (int8 fast / bf16 accurate)",
    "e": "(e) + batch lane for the batch part",
}


# --- the arithmetic (tests/unit/bench/test_cost_waterfall.py) ---


def cost_usd(worker_seconds: float, *, cores: int, price_per_core_hour: float) -> float:
    """The price of `worker_seconds` busy seconds of a worker of `cores` cores."""
    return worker_seconds * cores * price_per_core_hour / 3600.0


def per_1k(usd: float, requests: int) -> float:
    return 1000.0 * usd / requests if requests else math.nan


def single_server_starts(arrivals: Sequence[float], service: Sequence[float]) -> list[float]:
    """When each request starts on one server that serves one at a time in
    arrival order: at its arrival, or when the one before it ends."""
    starts: list[float] = []
    free_at = -math.inf
    for arrival, seconds in zip(arrivals, service, strict=True):
        start = max(arrival, free_at)
        starts.append(start)
        free_at = start + seconds
    return starts


def tpot_s(total_s: float, ttft_s: float, completion_tokens: int) -> float | None:
    """Seconds per output token after the first; None with fewer than two."""
    if completion_tokens < 2:
        return None
    return max(0.0, total_s - ttft_s) / (completion_tokens - 1)


def differ_share(answers: Mapping[str, str], reference: Mapping[str, str]) -> tuple[float | None, int]:
    """Share of the answers (by request id, both sides present) whose text
    differs from the reference's; and how many were compared."""
    common = [key for key in answers if key in reference]
    if not common:
        return None, 0
    differ = sum(1 for key in common if answers[key].strip() != reference[key].strip())
    return differ / len(common), len(common)


@dataclass
class Stage:
    key: str
    label: str
    requests: int
    # Engine busy seconds by pool.
    worker_seconds: dict[str, float]
    cores_per_worker: dict[str, int]
    ttft_p50_s: float | None = None
    ttft_p99_s: float | None = None
    tpot_p50_s: float | None = None
    tpot_p99_s: float | None = None
    differ: float | None = None
    compared: int = 0
    token_share_usd: float | None = None
    cache: dict[str, int] = field(default_factory=dict)
    served_by: dict[str, int] = field(default_factory=dict)
    online_errors: int = 0
    batch: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    control_plane_cpu_s: float | None = None
    # (a): the CPU seconds its busy seconds used, all its cores together.
    engine_cpu_s: float | None = None
    # The speed probe's times (seconds): (a)'s between its requests; the
    # first mesh stage carries the one just before the mesh started, the
    # last the one just after it stopped (none between stages).
    speed_probe_s: list[float] = field(default_factory=list)

    @property
    def usd(self) -> float:
        return sum(
            cost_usd(seconds, cores=self.cores_per_worker[pool], price_per_core_hour=PRICE_PER_CORE_HOUR)
            for pool, seconds in self.worker_seconds.items()
        )

    @property
    def usd_per_1k(self) -> float:
        return per_1k(self.usd, self.requests)


def waterfall(stages: Sequence[Stage]) -> list[dict[str, float]]:
    """Each stage's cost per 1k, the step from the one before and the
    multiple of the first (naive) stage's cost it saves."""
    rows = []
    first = stages[0].usd_per_1k
    previous = first
    for stage in stages:
        now = stage.usd_per_1k
        rows.append(
            {
                "usd_per_1k": now,
                "step_usd_per_1k": previous - now,
                "step_ratio": previous / now if now else math.inf,
                "naive_over_this": first / now if now else math.inf,
            }
        )
        previous = now
    return rows


def waterfall_svg(labels: Sequence[str], costs: Sequence[float], *, title: str) -> str:
    """A waterfall on a log scale (the steps span orders of magnitude): each
    stage's bar is its cost, the lighter part to its right what the lever
    saved against the stage before."""
    width, left, right, bar_h, gap, top = 900, 330, 130, 30, 14, 50
    low = 10 ** math.floor(math.log10(min(costs)))
    high = 10 ** math.ceil(math.log10(max(costs)))
    span = math.log10(high) - math.log10(low)

    def x(value: float) -> float:
        return left + (width - left - right) * (math.log10(value) - math.log10(low)) / span

    height = top + len(costs) * (bar_h + gap) + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="24" font-size="15" font-weight="bold">{escape(title)}</text>',
    ]
    decade = low
    while decade <= high * 1.0001:
        px = x(decade)
        parts.append(f'<line x1="{px:.1f}" y1="{top - 8}" x2="{px:.1f}" y2="{height - 32}" stroke="#ddd"/>')
        parts.append(f'<text x="{px:.1f}" y="{height - 14}" text-anchor="middle" fill="#555">{decade:g}</text>')
        decade *= 10
    previous: float | None = None
    for i, (label, cost) in enumerate(zip(labels, costs, strict=True)):
        y = top + i * (bar_h + gap)
        parts.append(f'<text x="{left - 8}" y="{y + bar_h * 0.65:.1f}" text-anchor="end">{escape(label)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{x(cost) - left:.1f}" height="{bar_h}" fill="#2b6cb0"/>')
        if previous is not None and previous > cost:
            parts.append(
                f'<rect x="{x(cost):.1f}" y="{y}" width="{x(previous) - x(cost):.1f}" height="{bar_h}" '
                'fill="#90cdf4" opacity="0.7"/>'
            )
        elif previous is not None and previous < cost:
            # A lever that cost more than the stage before it.
            parts.append(
                f'<rect x="{x(previous):.1f}" y="{y}" width="{x(cost) - x(previous):.1f}" height="{bar_h}" '
                'fill="#e53e3e" opacity="0.8"/>'
            )
        parts.append(f'<text x="{x(max(cost, previous or cost)) + 6:.1f}" y="{y + bar_h * 0.65:.1f}">{cost:.4g}</text>')
        previous = cost
    parts.append(
        f'<text x="{left}" y="{height - 2}" fill="#555" font-size="11">USD per 1,000 requests (log scale)</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


# --- the run ---


def repeat_setting(asked_again: float) -> str:
    """Which of issue 18's settings a share of requests asking an earlier
    question again (exact or paraphrased) is: the literature puts what a
    semantic cache absorbs at 30-60%."""
    if asked_again < 0.35:
        return f"the low setting, {100 * asked_again:.0f}% asked again"
    if asked_again < 0.5:
        return f"the middle setting, {100 * asked_again:.0f}% asked again"
    return f"the high setting, {100 * asked_again:.0f}% asked again"


def trace_shape(args: argparse.Namespace) -> WorkloadShape:
    return WorkloadShape(
        seed=args.seed,
        duration_s=args.duration,
        rate_rps=args.rate,
        repeat_share=args.repeats,
        paraphrase_share=args.paraphrases,
        batch_share=args.batch,
    )


def make_trace(args: argparse.Namespace) -> list[TraceRecord]:
    # Short answers for every request (hard ones ask for 128 tokens): the
    # whole waterfall must fit one run on a small machine.
    return [
        r.model_copy(update={"max_tokens": min(r.max_tokens, args.max_tokens)}) for r in generate(trace_shape(args))
    ]


@dataclass
class NaiveRun:
    answers: dict[str, str]
    service_s: list[float]
    first_token_s: list[float]
    tokens: list[int]
    # The process's CPU seconds in each generate() (all torch threads).
    cpu_s: list[float] = field(default_factory=list)
    # The speed probe between requests (not in any service time).
    speed_probe_s: list[float] = field(default_factory=list)


def naive_transformers(records: Sequence[TraceRecord], models_dir: Path) -> NaiveRun:
    """Every request, in arrival order, one at a time on plain transformers
    (bf16, the same prepared model, its chat template), greedy."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    class FirstToken(BaseStreamer):  # type: ignore[misc]
        """put() gets the prompt first, then each new token."""

        def __init__(self) -> None:
            self.calls = 0
            self.at: float | None = None

        def put(self, value: Any) -> None:
            self.calls += 1
            if self.calls == 2:
                self.at = time.monotonic()

        def end(self) -> None:
            pass

    torch.set_num_threads(NAIVE_CORES)
    path = str(models_dir / "smollm2")
    tokenizer: Any = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, local_files_only=True)
    model.eval()
    run = NaiveRun({}, [], [], [])
    for index, record in enumerate(records):
        ids = tokenizer.apply_chat_template(
            [m.model_dump() for m in record.messages], add_generation_prompt=True, return_tensors="pt"
        )
        if not isinstance(ids, torch.Tensor):
            ids = ids["input_ids"]
        streamer = FirstToken()
        started, cpu_started = time.monotonic(), time.process_time()
        with torch.inference_mode():
            output = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=record.max_tokens,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
                streamer=streamer,
            )
        ended = time.monotonic()
        run.cpu_s.append(time.process_time() - cpu_started)
        new = output[0, ids.shape[1] :]
        run.answers[record.id] = tokenizer.decode(new, skip_special_tokens=True)
        run.service_s.append(ended - started)
        run.first_token_s.append((streamer.at or ended) - started)
        run.tokens.append(int(new.shape[0]))
        if index % 25 == 0:
            run.speed_probe_s.append(time_speed_probe())
            print(f"  naive {index}/{len(records)}", flush=True)
    run.speed_probe_s.append(time_speed_probe())
    return run


def naive_stage(records: Sequence[TraceRecord], run: NaiveRun, *, speed: float = 1.0) -> Stage:
    starts = single_server_starts([r.at_s / speed for r in records], run.service_s)
    ttfts, tpots = [], []
    for record, start, service, first, tokens in zip(
        records, starts, run.service_s, run.first_token_s, run.tokens, strict=True
    ):
        if record.lane != "online":
            continue
        ttfts.append(start - record.at_s / speed + first)
        tpot = tpot_s(service, first, tokens)
        if tpot is not None:
            tpots.append(tpot)
    return Stage(
        key="a",
        label=STAGES["a"],
        requests=len(records),
        worker_seconds={"transformers": sum(run.service_s)},
        cores_per_worker={"transformers": NAIVE_CORES},
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p99_s=percentile(ttfts, 99),
        tpot_p50_s=percentile(tpots, 50),
        tpot_p99_s=percentile(tpots, 99),
        differ=0.0,
        compared=len(records),
        wall_s=starts[-1] + run.service_s[-1] if starts else 0.0,
        engine_cpu_s=sum(run.cpu_s) if run.cpu_s else None,
        speed_probe_s=list(run.speed_probe_s),
    )


# Below this share of the CPU it pays for, (a) was slowed by other work on
# the machine: its busy seconds, and every ratio to it, are overstated.
NAIVE_MIN_CPU_SHARE = 0.8


# The machine's speed can drift between (a) and the mesh's stages by more
# than any lever (a host shared with other tenants: one run's (a) took 261 s
# where the morning's took 199 s, at 98% of its CPU). The CPU share above
# cannot see that (the work itself took more CPU), so a fixed workload is
# timed during (a), just before the mesh starts and just after it stops
# (not between stages: the idle mesh's own processes would be in it).
SPEED_DRIFT_WARN = 0.10


@functools.cache
def _probe_operands() -> tuple[Any, Any]:
    import torch

    generator = torch.Generator().manual_seed(0)
    # One token's decode on a small model streams its weights from memory:
    # a bf16 vector-matrix product over 151 MB does the same.
    vector = torch.rand(1, 576, generator=generator).to(torch.bfloat16)
    weights = torch.rand(576, 131072, generator=generator).to(torch.bfloat16)
    return vector, weights


def time_speed_probe(repeats: int = 3) -> float:
    """The fastest of `repeats` timings of a fixed workload shaped like (a)'s
    decode (memory-bound bf16, on the naive deploy's threads): lower is a
    faster machine."""
    import torch

    torch.set_num_threads(NAIVE_CORES)
    vector, weights = _probe_operands()
    best = math.inf
    with torch.inference_mode():
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(10):
                vector @ weights
            best = min(best, time.perf_counter() - started)
    return best


def speed_drift(stages: Sequence[Stage]) -> float | None:
    """The probe's median during (a) over its median around the mesh's
    stages: above 1, the machine was slower during (a), and every ratio to
    (a) is overstated by that factor; None without probes on both sides."""
    naive = [t for s in stages if s.key == "a" for t in s.speed_probe_s]
    mesh = [t for s in stages if s.key != "a" for t in s.speed_probe_s]
    if not naive or not mesh:
        return None
    return statistics.median(naive) / statistics.median(mesh)


def speed_note(stages: Sequence[Stage], ratio: float) -> str:
    """What the probe says about the run's ratios, for the verdict."""
    drift = speed_drift(stages)
    if drift is None:
        return ""
    note = (
        f" A fixed probe (bf16 weights streamed, as a decode) ran {drift:.2f}x as long during (a) "
        "as around the mesh's stages"
    )
    if abs(drift - 1.0) <= SPEED_DRIFT_WARN:
        return note + " (the machine's speed held)."
    return note + (
        f": the machine's speed moved, so every ratio to (a) is off by that factor; at the mesh's speed "
        f"(e) would be {ratio / drift:.1f}x. Rerun on a quiet machine."
    )


def cpu_share(stage: Stage) -> float | None:
    """The CPU seconds a stage used over the core-seconds it is priced at."""
    paid = sum(seconds * stage.cores_per_worker[pool] for pool, seconds in stage.worker_seconds.items())
    return stage.engine_cpu_s / paid if stage.engine_cpu_s is not None and paid else None


POOLS = {"smollm2": ("smollm2", "0"), "smollm2-q8": ("smollm2-w8a8", "1")}


def mesh_config(metrics_offset: int, worker_base: int) -> dict[str, Any]:
    """examples/quantized.yaml's two versions (one core each), without the
    embeddings pool (the cache loads its own MiniLM)."""
    return {
        "default_model": "smollm2",
        "default_embedding_model": "",
        "telemetry": {"log_level": "WARNING"},
        "gateway": {"enabled": False},
        "worker": {"base_port": worker_base, "metrics_port_offset": metrics_offset},
        "pools": {
            pool: {
                "workers": 1,
                "price_per_hour": PRICE_PER_CORE_HOUR,
                "engine": {"kind": "vllm", "prepared_model": prepared, "cpu_kv_cache_gib": 2, "cpu_threads_bind": core},
            }
            for pool, (prepared, core) in POOLS.items()
        },
        "models": {
            "smollm2": {
                "task": "generate",
                "default_version": "1",
                "versions": {
                    "1": {"pool": "smollm2", "context_length": 4096},
                    "q8": {"pool": "smollm2-q8", "context_length": 4096},
                },
            }
        },
        "aliases": {"smollm2-fast": "smollm2@q8", "chat": "smollm2"},
        "routing": {
            "routes": {
                "chat": {
                    "policies": [
                        {"kind": "fast_accurate", "fast": "smollm2-fast", "accurate": "smollm2@1", "threshold": 0.5}
                    ]
                }
            }
        },
    }


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def worker_ports() -> tuple[int, int]:
    """(base port, metrics offset): two workers, their metrics ports and
    their batch consumers' (metrics + 1000), all free now."""
    offset = 2000
    for base in range(20000, 60000 - offset - 1002, 7):
        ports = [base, base + 1, base + offset, base + offset + 1, base + offset + 1000, base + offset + 1001]
        if all(_free(p) for p in ports):
            return base, offset
    raise RuntimeError("no free worker ports")


def busy_seconds(url: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("headrace_worker_busy_seconds_total "):
                return float(line.split()[1])
    raise RuntimeError(f"{url}: no headrace_worker_busy_seconds_total")


def control_plane_cpu_s(mesh: MeshUnderTest) -> float:
    return sum(process_group_cpu_s(p.pid) for p in mesh.processes if p.module != "services.worker")


def clear_response_cache(redis_url: str) -> int:
    """Delete the response cache's keys (exact entries, vectors, logs), so
    the next configuration starts cold."""
    client = redis.Redis.from_url(redis_url)
    deleted = 0
    for key in client.scan_iter(match="hr:cache:*", count=1000):
        deleted += int(client.delete(key))
    return deleted


async def replay(
    mesh: MeshUnderTest, records: Sequence[TraceRecord], *, no_cache: bool, batch_window_s: float, speed: float
) -> ReplayResult:
    async with AsyncHeadraceClient(mesh.router_address, timeout=600) as client:
        replayer = Replayer(client, no_cache=no_cache, batch_window_s=batch_window_s, batch_timeout_s=600, speed=speed)
        return await replayer.replay(records)


def mesh_stage(
    key: str,
    records: Sequence[TraceRecord],
    result: ReplayResult,
    busy: dict[str, float],
    online_ids: set[str],
    reference: Mapping[str, str],
) -> Stage:
    measured = [o for o in result.online if o.id in online_ids and not o.error]
    ttfts = [o.ttft_s for o in measured if o.ttft_s is not None]
    tpots = [
        t
        for o in measured
        if o.cache not in ("hit-exact", "hit-semantic") and o.ttft_s is not None and o.total_s is not None
        for t in [tpot_s(o.total_s, o.ttft_s, o.completion_tokens)]
        if t is not None
    ]
    answered: list[Outcome] = [o for o in result.online if not o.error]
    differ, compared = differ_share({o.id: o.text for o in answered}, reference)
    served_by: dict[str, int] = {}
    cache: dict[str, int] = {}
    for o in answered:
        served_by[o.model or "?"] = served_by.get(o.model or "?", 0) + 1
        cache[o.cache or "none"] = cache.get(o.cache or "none", 0) + 1
    return Stage(
        key=key,
        label=STAGES[key],
        requests=len(records),
        worker_seconds=busy,
        cores_per_worker={pool: 1 for pool in busy},
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p99_s=percentile(ttfts, 99),
        tpot_p50_s=percentile(tpots, 50),
        tpot_p99_s=percentile(tpots, 99),
        differ=differ,
        compared=compared,
        token_share_usd=sum(o.cost_usd for o in answered),
        cache=cache,
        served_by=served_by,
        online_errors=sum(1 for o in result.online if o.error),
        batch={
            "jobs": len(result.batches),
            "rows": sum(b.rows for b in result.batches),
            "completed": sum(b.completed for b in result.batches),
            "failed": sum(b.failed for b in result.batches),
            "errors": [b.error for b in result.batches if b.error],
            "last_finished_s": max((b.finished_after_s or 0.0 for b in result.batches), default=None),
        },
        wall_s=result.wall_s,
    )


async def mesh_stages(
    records: Sequence[TraceRecord], reference: Mapping[str, str], batch_window_s: float, speed: float = 1.0
) -> list[Stage]:
    online_ids = {r.id for r in records if r.lane == "online"}
    # (b)-(d) send the batch part online too: no batch lane yet.
    all_online = [r.model_copy(update={"lane": "online"}) for r in records]
    chat = [r.model_copy(update={"model": "chat"}) for r in records]
    plans: list[tuple[str, list[TraceRecord], bool]] = [
        ("b", [r.model_copy(update={"model": "smollm2@1"}) for r in all_online], True),
        ("c", [r.model_copy(update={"model": "smollm2@1"}) for r in all_online], False),
        ("d", [r.model_copy(update={"model": "chat"}) for r in all_online], False),
        # The batch part as jobs (model "chat": a job runs on one version,
        # the alias's default, smollm2@1; routing policies are for online traffic).
        ("e", chat, False),
    ]
    base, offset = worker_ports()
    stages: list[Stage] = []
    probe_before = time_speed_probe()  # the machine's speed, nothing else running
    with running_mesh(mesh_config(offset, base)) as mesh:
        urls = {pool: f"http://127.0.0.1:{base + i + offset}/metrics" for i, pool in enumerate(POOLS)}
        async with AsyncHeadraceClient(mesh.router_address, timeout=600) as client:
            for model in ("smollm2@1", "smollm2@q8"):  # warm-up, then nothing cached
                await client.generate("Say hello.", model=model, max_tokens=4, temperature=0.0, no_cache=True)
        for key, plan, no_cache in plans:
            cleared = clear_response_cache(mesh.settings.redis_url)
            print(f"{STAGES[key]} ... (cache keys cleared: {cleared})", flush=True)
            before = {pool: busy_seconds(url) for pool, url in urls.items()}
            cpu_before = control_plane_cpu_s(mesh)
            result = await replay(mesh, plan, no_cache=no_cache, batch_window_s=batch_window_s, speed=speed)
            # Batch rows may still be draining from the worker's view: let the counters settle.
            await asyncio.sleep(1.0)
            busy = {pool: busy_seconds(url) - before[pool] for pool, url in urls.items()}
            stage = mesh_stage(key, records, result, busy, online_ids, reference)
            stage.control_plane_cpu_s = control_plane_cpu_s(mesh) - cpu_before
            print(f"  {stage.usd_per_1k:.5f} USD/1k, busy {busy}, cache {stage.cache}", flush=True)
            stages.append(stage)
    # Around the mesh's stages: the first carries the probe before it
    # started, the last the probe after it stopped.
    stages[0].speed_probe_s.append(probe_before)
    stages[-1].speed_probe_s.append(time_speed_probe())
    return stages


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def busy_share(stage: Stage) -> float | None:
    """The busiest engine's busy seconds over the replay's wall time: near 1,
    the engine held a sequence all along and busy time is set by the
    arrivals, not by how much work each request took."""
    if stage.key == "a" or not stage.wall_s:
        return None
    return max(stage.worker_seconds.values()) / stage.wall_s


def report(
    args: argparse.Namespace, records: Sequence[TraceRecord], stages: Sequence[Stage], *, when: str | None = None
) -> None:
    steps = waterfall(stages)
    online = sum(1 for r in records if r.lane == "online")
    origins: dict[str, int] = {}
    for r in records:
        origins[r.origin] = origins.get(r.origin, 0) + 1
    rows = []
    for stage, step in zip(stages, steps, strict=True):
        rows.append(
            [
                stage.label,
                f"{stage.usd_per_1k:.5f}",
                f"{step['naive_over_this']:.1f}x",
                f"{step['step_ratio']:.2f}x",
                " + ".join(f"{s:.1f} s x{stage.cores_per_worker[p]} ({p})" for p, s in stage.worker_seconds.items()),
                "-" if stage.token_share_usd is None else f"{per_1k(stage.token_share_usd, stage.requests):.5f}",
                f"{_ms(stage.ttft_p50_s)} / {_ms(stage.ttft_p99_s)}",
                f"{_ms(stage.tpot_p50_s)} / {_ms(stage.tpot_p99_s)}",
                f"{_pct(stage.differ)} of {stage.compared}",
                ", ".join(f"{k} {v}" for k, v in sorted(stage.cache.items())) or "-",
                ", ".join(f"{k} {v}" for k, v in sorted(stage.served_by.items())) or "-",
                _pct(busy_share(stage)),
            ]
        )
    last = stages[-1]
    ratio = steps[-1]["naive_over_this"]
    within = last.ttft_p99_s is not None and last.ttft_p99_s <= TTFT_SLO_S
    verdict = (
        f"(e) costs {ratio:.1f}x less than (a) (target >= {TARGET_RATIO:.0f}x: "
        f"{'met' if ratio >= TARGET_RATIO else 'not met'}); its online TTFT p99 is "
        f"{_ms(last.ttft_p99_s)} ms against the {TTFT_SLO_S:.0f} s SLO ({'within' if within else 'not within'})."
    )
    naive_share = cpu_share(stages[0])
    if naive_share is not None:
        verdict += f" (a) used {100 * naive_share:.0f}% of the CPU it is priced at" + (
            f": below {100 * NAIVE_MIN_CPU_SHARE:.0f}%, other work on the machine slowed it, and every ratio "
            "to it is overstated: rerun on a quiet machine."
            if naive_share < NAIVE_MIN_CPU_SHARE
            else "."
        )
    verdict += speed_note(stages, ratio)
    by_stage = {s.key: s for s in stages}
    e_batch = by_stage["e"].batch if "e" in by_stage else {}
    table = "\n".join(
        [
            "# bench-cost: the cost waterfall (one trace, one run)",
            "",
            f"One run, {when or time.strftime('%Y-%m-%dT%H:%M:%S%z')}, {os.cpu_count()} CPUs, machine shared "
            "with other work (compare ratios, not absolutes). SmolLM2-135M-Instruct.",
            "",
            f"- **{verdict}**",
            f"- Trace: `headrace bench trace` seed {args.seed}, Poisson {args.rate}/s for {args.duration:.0f} s: "
            f"{len(records)} requests ({online} online, {len(records) - online} batch part); origins "
            + ", ".join(f"{k} {v}" for k, v in sorted(origins.items()))
            + f" (repeats {args.repeats}, paraphrases {args.paraphrases}: "
            + f"{repeat_setting(args.repeats + args.paraphrases)}); "
            f"max_tokens capped at {args.max_tokens}; temperature 0; replayed at {getattr(args, 'speed', 1.0):g}x "
            "the trace's pace.",
            "",
            f"![cost waterfall]({args.name}.svg)",
            "",
            markdown_table(
                [
                    "configuration",
                    "USD / 1k requests",
                    "(a) / this",
                    "step",
                    "worker-seconds (busy s x cores, pool)",
                    "token-share USD / 1k (mesh-reported, online)",
                    "TTFT p50 / p99 ms (online)",
                    "TPOT p50 / p99 ms (online, engine-served)",
                    "answers differing from (a)",
                    "cache outcomes (answered online)",
                    "served by",
                    "busiest engine busy / replay wall",
                ],
                rows,
            ),
            "",
            "How the cost is computed, for every row: `USD / 1k = busy worker-seconds x cores per worker x "
            f"{PRICE_PER_CORE_HOUR} USD per core-hour / 3600 x 1000 / {len(records)} requests`. Busy seconds: "
            "the engine held one or more sequences (the mesh's workers count them, "
            "`headrace_worker_busy_seconds_total`, read before and after each replay, batch rows included; the naive "
            f"deploy's are its generate() calls, one at a time). A mesh worker is bound to one core; the naive deploy "
            f"runs torch on {NAIVE_CORES} and pays for {NAIVE_CORES}. The naive deploy is sized as exactly the busy "
            "time it needs (no idle, its best case); idle mesh workers are not charged either. The token-share column "
            "is the sum of the per-answer cost the mesh reports (usage `cost_usd`: each request's share of its "
            "engine's busy time by tokens processed), over the online answers only (batch rows report none to the "
            "replayer), so it is at most the busy-time cost. The router, cache (with its MiniLM), scheduler and "
            "Redis are not in the price: their CPU seconds per configuration are in the JSON "
            "(`control_plane_cpu_s`).",
            "",
            "Reading it: busy time counts every second an engine holds at least one sequence. Where the last "
            "column is near 100%, the trace's arrivals kept that engine busy all along (a vLLM engine is "
            "never idle, though possibly far from full), so its busy seconds are the replay's length whatever "
            "each request costs it: a lever that takes work off a busy engine (cache hits, the batch lane) "
            "barely moves them, and one that adds an engine (routing to a second pool) adds its busy time. The "
            "token-share costs add up to the same busy time (every busy second is charged to some request), so "
            "they do not separate the levers either; the cache outcomes show the engine work a lever removed. "
            "The busy-time cost is what a deploy sized to this trace pays; at a load that fills the engines, "
            "work removed would come off busy time too (this run does not measure that).",
            "",
            "(a)'s latency: its measured service times put through one server taking requests in arrival order "
            "(a queue simulation: TTFT = wait + time to the first token); when it cannot keep up with the trace "
            "the queue, and the TTFT, grow with the run. (b)-(e): measured by the replayer (headrace/workload) at "
            "the trace's timestamps, through the router (gRPC streaming). In (b)-(d) the batch part is sent online "
            "too; the latency columns count the online part only in every row.",
            "",
            "Quality guard: each configuration's greedy answers against (a)'s, exact text, by request id "
            "((e): online answers only; batch rows' outputs are not fetched). Batched CPU arithmetic alone "
            "changes greedy answers (bench-quant: bf16 against itself in another batch order 60% identical), so "
            "(b)'s share is the floor for the mesh; (d) and (e) send easy requests to the int8 version, whose "
            "answers differ more (bench-quant: 0% identical to bf16, 88% token agreement): that share of cost "
            "is bought with answers that are not bf16's.",
            "",
            "Cache: the shipped setting `cache.semantic.serve: auto` serves semantic hits only where the "
            "calibration met its goals; for all-MiniLM-L6-v2 with the lexical verifier it did not (bench-cache), "
            "so (c)-(e) serve exact hits only (`hit-exact`); paraphrases are misses. Between (c), (d) and (e) the "
            "cache's Redis keys were deleted so each started cold. vLLM's prefix cache is not cleared between "
            "configurations (it only speeds up the shared long system prompts).",
            "",
            f"(e) batch lane: {e_batch.get('jobs', 0)} jobs, {e_batch.get('rows', 0)} rows, "
            f"{e_batch.get('completed', 0)} completed, {e_batch.get('failed', 0)} failed, last finished "
            f"{(e_batch.get('last_finished_s') or 0):.1f} s into the replay (window {args.batch_window:.0f} s). "
            "A job runs on one version (the alias `chat` resolves to smollm2@1; routing policies are for online "
            "traffic), so the batch part is not routed to int8.",
        ]
    )
    svg = waterfall_svg(
        [s.label.split(":")[0] if s.key == "a" else s.label for s in stages],
        [s.usd_per_1k for s in stages],
        title=f"USD per 1,000 requests, one trace of {len(records)} requests",
    )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{args.name}.svg").write_text(svg)
    write_results(
        args.name,
        {
            "trace_args": {k: v for k, v in vars(args).items() if k not in ("models_dir", "rerender", "name")},
            "trace": {**asdict(trace_shape(args)), "max_tokens_cap": args.max_tokens, "requests": len(records)},
            "price_per_core_hour": PRICE_PER_CORE_HOUR,
            "formula": "usd_per_1k = sum(busy_s x cores x price_per_core_hour / 3600) x 1000 / requests",
            "ttft_slo_s": TTFT_SLO_S,
            "target_ratio": TARGET_RATIO,
            "naive_over_e": ratio,
            "target_met": ratio >= TARGET_RATIO and within,
            # (a)'s CPU seconds over the core-seconds it is priced at.
            "naive_cpu_share": naive_share,
            # (a)'s speed probe over the mesh stages' (above 1: (a) ran on a slower machine).
            "speed_drift": speed_drift(stages),
            "stages": [{**asdict(s), "usd": s.usd, "usd_per_1k": s.usd_per_1k} for s in stages],
            "waterfall": steps,
        },
        table,
    )


def rerender(args: argparse.Namespace) -> None:
    """The tables and plot again from bench/results/cost.json (the trace
    is regenerated: it is deterministic for its seed)."""
    stored = json.loads((RESULTS_DIR / f"{args.name}.json").read_text())
    for name, value in stored.get("trace_args", {}).items():
        setattr(args, name, value)
    fields = {f for f in Stage.__dataclass_fields__}
    stages = [Stage(**{k: v for k, v in s.items() if k in fields}) for s in stored["stages"]]
    report(args, make_trace(args), stages, when=stored["when"])
    # write_results stamps the time it writes: keep the run's.
    path = RESULTS_DIR / f"{args.name}.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "when": stored["when"]}, indent=2) + "\n")


async def run(args: argparse.Namespace) -> None:
    models_dir = Path(args.models_dir)
    for name in ("smollm2", "smollm2-w8a8"):
        prepare_model(name, models_dir, progress=False)
    records = make_trace(args)
    with tempfile.TemporaryDirectory() as tmp:
        write_trace(records, Path(tmp) / "trace.jsonl")  # validates the trace as the CLI would
    print(f"trace: {len(records)} requests", flush=True)
    print(STAGES["a"] + " ...", flush=True)
    naive = naive_transformers(records, models_dir)
    stages = [naive_stage(records, naive, speed=args.speed)]
    print(f"  {stages[0].usd_per_1k:.5f} USD/1k", flush=True)
    stages += await mesh_stages(records, naive.answers, args.batch_window, args.speed)
    report(args, records, stages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--duration", type=float, default=50.0, help="seconds of traffic in the trace")
    parser.add_argument("--rate", type=float, default=3.5, help="mean requests/s")
    parser.add_argument("--repeats", type=float, default=0.25, help="share of exact repeats")
    parser.add_argument("--paraphrases", type=float, default=0.15, help="share of paraphrases")
    parser.add_argument("--batch", type=float, default=0.15, help="share in the batch part")
    parser.add_argument("--max-tokens", type=int, default=32, help="cap on each request's max_tokens")
    parser.add_argument("--batch-window", type=float, default=20.0, help="(e): seconds per batch window")
    parser.add_argument("--models-dir", default=os.environ.get("HEADRACE_MODELS_DIR", str(default_models_dir())))
    parser.add_argument("--speed", type=float, default=1.0, help="replay the trace this many times faster")
    parser.add_argument("--name", default="cost", help="results under bench/results/NAME.{md,json,svg}")
    parser.add_argument("--rerender", action="store_true", help="rewrite cost.md/.svg from cost.json; run nothing")
    args = parser.parse_args()
    if args.rerender:
        rerender(args)
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
