"""make bench-cache: the semantic cache measured through the real cache
service (a process: gRPC, Redis, all-MiniLM-L6-v2), with the verifier and
without it (two meshes, one after the other, each on its own Redis).

- Accuracy, per category, on the held-out part of bench/data/
  semantic-cache-pairs.txt (services/cache/evaluation.py: the open set's
  stored questions are left out; every hit counts): precision over all
  hits, paraphrase hit rate, wrong hits per near-miss category. The
  calibration part and the documentation sentences (paraphrase-pairs.json)
  are shown from services/cache/calibration.json.
- Lookup latency, one at a time: exact hits, semantic lookups of new text
  (embedded by the model) and of text whose embedding is cached; plus the
  verifier's own cost, in this process, on the pairs it judged.
- Bursts: 32 cacheable lookups at once (new text each, half paraphrases of
  stored questions), many rounds, straight to the cache; and 32 concurrent
  temperature-0 requests through the router (synthetic engine behind it),
  counting what its cache client saw (errors by code, timeouts); and one
  burst far past the model's rate, to show the fast misses of the bounded
  queue (cache.semantic.lookup_embed_budget_ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc.aio
from prometheus_client.parser import text_string_to_metric_families

from bench.harness import markdown_table, percentile, running_mesh, write_results
from headrace.runtime.service_certs import Role
from headrace.v1 import cache_pb2, cache_pb2_grpc, generation_pb2, router_pb2_grpc
from services.cache.calibration import RECORD
from services.cache.evaluation import ABSENT, CONTRASTIVE, GOALS, PARAPHRASE, Probe, load_labelled, plan, split
from services.cache.verifier import LexicalVerifier

VERSION = "smollm2@1"
HIT = (generation_pb2.CACHE_OUTCOME_HIT_EXACT, generation_pb2.CACHE_OUTCOME_HIT_SEMANTIC)
LOOKUP_TIMEOUT_S = 0.25  # the router's default cache.lookup_timeout_s
BURST = 32


def mesh_config(
    verifier: str, embedder: str = "process", *, shipped_budget: bool = False, **semantic_settings: Any
) -> dict[str, Any]:
    semantic: dict[str, Any] = {"serve": "on", "verifier": verifier, "embedder": embedder, **semantic_settings}
    if not shipped_budget:
        semantic["lookup_embed_budget_ms"] = 10_000
    return {
        "pools": {"smollm2": {"engine": {"kind": "synthetic"}, "workers": 1}},
        # Served whatever the calibration record says: this measures it. The
        # embedding budget is left to the caller's deadline: lookups one at a
        # time (accuracy, latency) are never shed on a busy host, and bursts,
        # with the router's 250 ms deadline, get 250 - 50 (reply margin) ms.
        "cache": {"semantic": semantic},
    }


def ask(text: str) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        messages=[generation_pb2.ChatMessage(role="user", content=text)],
        sampling=generation_pb2.SamplingParams(temperature=0.0, max_tokens=16),
    )


@dataclass
class Tally:
    queries: int = 0
    hits: int = 0
    right: int = 0

    @property
    def wrong(self) -> int:
        return self.hits - self.right


@dataclass
class Accuracy:
    tallies: dict[str, Tally] = field(default_factory=dict)
    wrong_examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def hits(self) -> int:
        return sum(t.hits for t in self.tallies.values())

    @property
    def precision(self) -> float:
        hits = self.hits
        return sum(t.right for t in self.tallies.values()) / hits if hits else 1.0

    def rate(self, category: str, what: str) -> float:
        tally = self.tallies.get(category, Tally())
        value = tally.right if what == "right" else tally.wrong
        return value / tally.queries if tally.queries else 0.0

    def meets_goals(self) -> bool:
        return (
            self.precision >= GOALS.min_precision
            and all(self.rate(c, "wrong") <= GOALS.max_contrastive_wrong_rate for c in CONTRASTIVE)
            and self.rate(PARAPHRASE, "right") >= GOALS.min_paraphrase_hit_rate
        )


class CacheBench:
    def __init__(self, stub: cache_pb2_grpc.CacheStub) -> None:
        self._stub = stub
        self.latency: dict[str, list[float]] = {}

    async def store(self, tenant: str, text: str) -> str:
        reply = await self._stub.Store(
            cache_pb2.CacheStoreRequest(
                tenant=tenant,
                model_version=VERSION,
                request=ask(text),
                response=generation_pb2.GenerateResponse(text=text, finish_reason=generation_pb2.FINISH_REASON_STOP),
            )
        )
        if not reply.stored or not reply.semantic:
            raise RuntimeError(f"not stored semantically ({reply.reason}): {text[:60]}")
        return str(reply.entry_id)

    async def lookup(self, tenant: str, text: str, kind: str | None = None) -> cache_pb2.CacheLookupResponse:
        started = time.perf_counter()
        reply: cache_pb2.CacheLookupResponse = await self._stub.Lookup(
            cache_pb2.CacheLookupRequest(tenant=tenant, model_version=VERSION, request=ask(text))
        )
        if kind is not None:
            self.latency.setdefault(kind, []).append(time.perf_counter() - started)
        return reply


async def accuracy(bench: CacheBench, tenant: str, stored: list[str], probes: list[Probe]) -> Accuracy:
    entry_of = {await bench.store(tenant, text): text for text in stored}
    result = Accuracy()
    for probe in probes:
        reply = await bench.lookup(tenant, probe.text, "semantic lookup, new text (embedded)")
        tally = result.tallies.setdefault(probe.category, Tally())
        tally.queries += 1
        if reply.outcome not in HIT:
            continue
        tally.hits += 1
        matched = entry_of.get(reply.entry_id, "?")
        if matched in probe.right:
            tally.right += 1
        else:
            result.wrong_examples.append(
                {"category": probe.category, "query": probe.text, "matched": matched, "similarity": reply.similarity}
            )
    return result


@dataclass
class Burst:
    lookups: int = 0
    hits: int = 0
    timeouts: int = 0
    errors: int = 0
    fast_misses: int = 0
    latency: list[float] = field(default_factory=list)


async def lookup_bursts(
    stub: cache_pb2_grpc.CacheStub, tenant: str, stored: list[str], rounds: int, size: int, first_round: int = 0
) -> Burst:
    """`rounds` bursts of `size` lookups at once, new text every time (so
    each is embedded): half paraphrase a stored question, half are new."""
    burst = Burst()

    async def one(text: str) -> None:
        started = time.perf_counter()
        try:
            reply = await stub.Lookup(
                cache_pb2.CacheLookupRequest(tenant=tenant, model_version=VERSION, request=ask(text)),
                timeout=LOOKUP_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                burst.timeouts += 1
            else:
                burst.errors += 1
            return
        finally:
            burst.latency.append(time.perf_counter() - started)
            burst.lookups += 1
        burst.hits += reply.outcome in HIT

    for round_number in range(first_round, first_round + rounds):
        # New to the embedding cache every round, and no digits in the
        # paraphrases (a number the stored question lacks is a near miss).
        lead = _LEADS[round_number % len(_LEADS)]
        texts = [
            f"{lead} {stored[(round_number * size + i) % len(stored)]}"
            if i % 2 == 0
            else f"What would a {round_number}-year study of topic {i} in garden soil find?"
            for i in range(size)
        ]
        await asyncio.gather(*(one(text) for text in texts))
    return burst


_LEADS = (
    "Quick question:", "Hi,", "Hello!", "Please help:", "I wonder,", "Tell me:", "Could you answer this:",
    "Question:", "Hey there,", "Help me out:", "Excuse me,", "Good morning!",
)  # fmt: skip


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def counted(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items())
    )


async def router_bursts(address: str, metrics_url: str, rounds: int) -> dict[str, Any]:
    """32 concurrent temperature-0 requests through the router, `rounds`
    times; the router's own cache-client counters say what the lookups did."""
    before = scrape(metrics_url)
    served: dict[str, int] = {}
    failures = 0
    latency: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)

        async def one(text: str) -> None:
            nonlocal failures
            started = time.perf_counter()
            call = stub.Generate(ask(text))
            try:
                await call
                outcome = dict(await call.initial_metadata()).get("x-headrace-cache", "?")
                served[str(outcome)] = served.get(str(outcome), 0) + 1
            except grpc.aio.AioRpcError:
                failures += 1
            latency.append(time.perf_counter() - started)

        for round_number in range(rounds):
            await asyncio.gather(
                *(one(f"Question {i} of burst {round_number}: how do I water plant number {i}?") for i in range(BURST))
            )
    after = scrape(metrics_url)
    name = "headrace_router_cache_errors_total"
    return {
        "requests": rounds * BURST,
        "served": served,
        "failed_requests": failures,
        "lookup_timeouts": counted(after, name, op="lookup", code="DEADLINE_EXCEEDED")
        - counted(before, name, op="lookup", code="DEADLINE_EXCEEDED"),
        "lookup_errors": counted(after, name, op="lookup") - counted(before, name, op="lookup"),
        "p50_ms": percentile(latency, 50) * 1000,
        "p99_ms": percentile(latency, 99) * 1000,
    }


def verifier_cost_us(probes: list[Probe], stored: list[str]) -> dict[str, float]:
    """The lexical verifier's time per check, in this process, on each
    lookup text against a stored question (fresh texts: no cache help)."""
    verifier = LexicalVerifier()
    times = []
    for i, probe in enumerate(probes):
        candidate = stored[i % len(stored)]
        started = time.perf_counter()
        verifier.verify(probe.text + f" ({i})", candidate + f" ({i})")
        times.append(time.perf_counter() - started)
    return {"p50_us": percentile(times, 50) * 1e6, "p99_us": percentile(times, 99) * 1e6}


async def measure_mesh(verifier: str, rounds: int) -> dict[str, Any]:
    pairs = load_labelled()
    _calibration, held_out = split(pairs)
    stored, probes = plan(held_out)
    result: dict[str, Any] = {"verifier": verifier}
    with running_mesh(mesh_config(verifier)) as mesh:
        async with mesh.internal_channel(f"127.0.0.1:{mesh.settings.cache.port}", Role.CACHE) as channel:
            stub = cache_pb2_grpc.CacheStub(channel)
            bench = CacheBench(stub)
            result["accuracy"] = await accuracy(bench, f"bench-{verifier}", stored, probes)
            for text in stored:
                await bench.lookup(f"bench-{verifier}", text, "exact hit")
            for probe in probes:
                await bench.lookup(f"bench-{verifier}", probe.text, "semantic lookup, embedding cached")
            result["latency"] = bench.latency
            result["burst"] = await lookup_bursts(stub, f"bench-{verifier}", stored, rounds, BURST)
            # Far past the model's rate: 8 x 32 at once.
            result["saturated"] = await lookup_bursts(stub, f"bench-{verifier}", stored, 1, 8 * BURST, rounds)
            cache_metrics = scrape(f"http://127.0.0.1:{mesh.settings.cache.metrics_port}/metrics")
            result["fast_misses"] = {
                reason: counted(cache_metrics, "headrace_cache_semantic_skipped_total", reason=reason)
                for reason in ("embedder-busy", "embedder-timeout", "deadline")
            }
        if verifier == "lexical":
            result["router"] = await router_bursts(mesh.router_address, f"{mesh.http_url}/metrics", max(1, rounds // 2))
    result["verifier_cost"] = verifier_cost_us(probes, stored)
    return result


# What --embedders-only compares: the model in a thread of the cache's
# process; in its own process at the cache's CPU priority; and in its own
# process below it (the shipped embed_nice).
EMBEDDER_VARIANTS: dict[str, dict[str, Any]] = {
    "thread": {"embedder": "thread"},
    "process, nice 0": {"embedder": "process", "embed_nice": 0},
    "process, nice 10 (shipped)": {"embedder": "process"},
}


async def measure_embedders(rounds: int, repeats: int) -> dict[str, dict[str, Any]]:
    """The model in a thread of the cache's process vs in its own process
    (at the cache's priority, and below it): the same bursts (direct and
    through the router), meshes alternating variant by variant, so that the
    host's load falls on all alike. With the shipped embedding budget
    (lookup_embed_budget_ms), as a deployment runs."""
    _calibration, held_out = split(load_labelled())
    stored, _probes = plan(held_out)
    stored = stored[:64]
    totals: dict[str, dict[str, Any]] = {}
    for repeat in range(repeats):
        for variant, settings in EMBEDDER_VARIANTS.items():
            total = totals.setdefault(variant, {"burst": Burst(), "router": []})
            with running_mesh(mesh_config("lexical", shipped_budget=True, **settings)) as mesh:
                address = f"127.0.0.1:{mesh.settings.cache.port}"
                async with mesh.internal_channel(address, Role.CACHE) as channel:
                    stub = cache_pb2_grpc.CacheStub(channel)
                    bench = CacheBench(stub)
                    tenant = f"bench-{settings['embedder']}"
                    for text in stored:
                        await bench.store(tenant, text)
                    burst = await lookup_bursts(stub, tenant, stored, rounds, BURST, repeat * rounds)
                for name in ("lookups", "hits", "timeouts", "errors"):
                    setattr(total["burst"], name, getattr(total["burst"], name) + getattr(burst, name))
                total["burst"].latency.extend(burst.latency)
                total["router"].append(
                    await router_bursts(mesh.router_address, f"{mesh.http_url}/metrics", max(1, rounds // 2))
                )
    return totals


def embedder_rows(totals: dict[str, dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for variant, total in totals.items():
        routed = total["router"]
        rows.append(
            [
                f"model in {'a thread' if variant == 'thread' else 'its own process, ' + variant.split(', ', 1)[1]}",
                *burst_row("", total["burst"])[1:],
                sum(r["requests"] for r in routed),
                sum(r["lookup_timeouts"] for r in routed),
                sum(r["lookup_errors"] for r in routed),
            ]
        )
    return rows


EMBEDDER_HEADERS = [
    "cache.semantic.embedder (embed_nice)",
    "lookups",
    "hits",
    "timeouts",
    "errors",
    "added p50 ms",
    "added p99 ms",
    "via router: requests",
    "lookup timeouts",
    "lookup errors",
]


def _load() -> float:
    return os.getloadavg()[0]


def _cores() -> int:
    return os.cpu_count() or 1


def pct(value: float) -> str:
    return f"{value * 100:.1f}"


def accuracy_rows(with_v: Accuracy, without: Accuracy) -> list[list[Any]]:
    rows = []
    for category in (PARAPHRASE, ABSENT, *CONTRASTIVE):
        a, b = with_v.tallies.get(category, Tally()), without.tallies.get(category, Tally())
        if category == PARAPHRASE:
            what = "right hits %"
            values = [pct(with_v.rate(category, "right")), pct(without.rate(category, "right"))]
        else:
            what = "wrong hits %"
            values = [pct(with_v.rate(category, "wrong")), pct(without.rate(category, "wrong"))]
        rows.append([category, a.queries, what, *values, f"{a.wrong} / {b.wrong}"])
    rows.append(
        ["all hits: precision %", sum(t.queries for t in with_v.tallies.values()), "right / hits",
         pct(with_v.precision), pct(without.precision), f"{with_v.hits} / {without.hits} hits"]
    )  # fmt: skip
    return rows


def record_rows(record: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name, key in (("calibration part", "calibration"), ("held-out part", "held_out")):
        row = record[key]
        rows.append([name, row["threshold"], pct(row["precision"]), pct(row["paraphrase_hit_rate"]), row["goals_met"]])
    docs = record.get("documentation_sentences")
    if docs:
        for label, key in (("with verifier", "with_verifier"), ("without verifier", "without_verifier")):
            row = docs[key]
            rows.append(
                [f"documentation sentences ({docs['file']}), {label}", row["threshold"], pct(row["precision"]),
                 pct(row["paraphrase_hit_rate"]), row["goals_met"]]
            )  # fmt: skip
    return rows


def burst_row(name: str, burst: Burst) -> list[Any]:
    return [
        name,
        burst.lookups,
        burst.hits,
        burst.timeouts,
        burst.errors,
        percentile(burst.latency, 50) * 1000,
        percentile(burst.latency, 99) * 1000,
    ]


async def run(rounds: int) -> None:
    started = time.monotonic()
    record = json.loads(RECORD.read_text())
    # One mesh after the other (each loads the model): on a shared host the
    # burst columns follow the host's load more than the verifier.
    plain = await measure_mesh("none", rounds)
    lexical = await measure_mesh("lexical", rounds)
    elapsed = time.monotonic() - started
    with_v, without = lexical["accuracy"], plain["accuracy"]
    latency_rows = []
    for kind in lexical["latency"]:
        a, b = lexical["latency"][kind], plain["latency"][kind]
        latency_rows.append(
            [kind, len(a), percentile(a, 50) * 1000, percentile(a, 99) * 1000, percentile(b, 50) * 1000,
             percentile(b, 99) * 1000]
        )  # fmt: skip
    router = lexical["router"]
    table = "\n".join(
        [
            f"## Semantic cache, held-out pairs, via the cache service (threshold {record['similarity_threshold']})",
            "",
            markdown_table(
                [
                    "category",
                    "questions",
                    "measure",
                    "with verifier",
                    "without verifier",
                    "wrong hits (with / without)",
                ],
                accuracy_rows(with_v, without),
            ),
            "",
            f"Goals on the held-out part (>= 99% of hits right, <= 1% wrong hits per near-miss category, >= 55% "
            f"of paraphrases hit): with the verifier {'met' if with_v.meets_goals() else 'NOT met'}; without "
            f"{'met' if without.meets_goals() else 'NOT met'}. The open set ('{ABSENT}') asks paraphrases of "
            "questions never stored: every hit there is wrong.",
            "",
            "## From services/cache/calibration.json (in-process, same rule)",
            "",
            markdown_table(["data", "threshold", "precision %", "paraphrase hit %", "goals met"], record_rows(record)),
            "",
            "## Cache.Lookup latency, one at a time (gRPC to the cache process, Redis, model on 1 CPU thread)",
            "",
            markdown_table(
                ["lookup", "n", "p50 ms (verifier)", "p99 ms (verifier)", "p50 ms (none)", "p99 ms (none)"],
                latency_rows,
            ),
            "",
            f"The verifier's own cost per check, in-process: p50 {lexical['verifier_cost']['p50_us']:.0f} us, "
            f"p99 {lexical['verifier_cost']['p99_us']:.0f} us.",
            "",
            f"## Bursts of {BURST} concurrent lookups (new text each, half paraphrases; {LOOKUP_TIMEOUT_S * 1000:.0f}"
            " ms client deadline, as the router's)",
            "",
            markdown_table(
                ["burst", "lookups", "hits", "timeouts", "errors", "added p50 ms", "added p99 ms"],
                [
                    burst_row(f"{rounds} x {BURST}, verifier", lexical["burst"]),
                    burst_row(f"{rounds} x {BURST}, no verifier", plain["burst"]),
                    burst_row(f"1 x {8 * BURST} (saturating), verifier", lexical["saturated"]),
                ],
            ),
            "",
            f"Fast misses counted by the cache (verifier mesh): {lexical['fast_misses']}.",
            "",
            f"Through the router ({router['requests']} temperature-0 requests, {BURST} at a time, synthetic engine): "
            f"served {router['served']}, failed {router['failed_requests']}, cache lookup timeouts "
            f"{router['lookup_timeouts']:.0f}, lookup errors (any code) {router['lookup_errors']:.0f}; request "
            f"p50 {router['p50_ms']:.0f} ms, p99 {router['p99_ms']:.0f} ms.",
            "",
            "A lookup's latency is what it adds to the request (it comes before placement). A 'timeout' is a "
            f"lookup not answered within {LOOKUP_TIMEOUT_S * 1000:.0f} ms; the cache answers miss "
            "cache.lookup_reply_margin_ms before the deadline and turns lookups away when the model is "
            "saturated (embedder-busy). Timeouts left are lookups that waited in the router's or the cache's gRPC "
            "stack for an event loop to be scheduled (CPU-starved processes): the model runs below the cache's "
            "CPU priority (cache.semantic.embed_nice) for that; bench/results/cache-embedders.md compares.",
            "",
            f"{elapsed:.0f} s in all; load average at the end {_load():.1f} on {_cores()} cores. The machine was "
            "shared with other work: compare the columns side by side.",
        ]
    )

    def burst_json(burst: Burst) -> dict[str, Any]:
        return {
            "lookups": burst.lookups,
            "hits": burst.hits,
            "timeouts": burst.timeouts,
            "errors": burst.errors,
            "p50_ms": percentile(burst.latency, 50) * 1000,
            "p99_ms": percentile(burst.latency, 99) * 1000,
        }

    write_results(
        "cache",
        {
            "threshold": record["similarity_threshold"],
            "held_out": {
                name: {
                    "precision": acc.precision,
                    "goals_met": acc.meets_goals(),
                    "categories": {c: vars(t) for c, t in acc.tallies.items()},
                    "wrong_examples": acc.wrong_examples,
                }
                for name, acc in (("with_verifier", with_v), ("without_verifier", without))
            },
            "latency_ms": {
                mesh["verifier"]: {
                    kind: {"n": len(v), "p50": percentile(v, 50) * 1000, "p99": percentile(v, 99) * 1000}
                    for kind, v in mesh["latency"].items()
                }
                for mesh in (lexical, plain)
            },
            "verifier_cost": lexical["verifier_cost"],
            "bursts": {
                "verifier": burst_json(lexical["burst"]),
                "no_verifier": burst_json(plain["burst"]),
                "saturating": burst_json(lexical["saturated"]),
                "fast_misses": lexical["fast_misses"],
                "router": router,
            },
        },
        table,
    )


@contextlib.contextmanager
def busy_cores(count: int) -> Iterator[None]:
    """`count` processes spinning on the CPU at normal priority meanwhile:
    the other work of a shared host, made repeatable."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


async def compare_embedders(rounds: int, repeats: int, busy: int = 0) -> None:
    started = time.monotonic()
    with busy_cores(busy):
        totals = await measure_embedders(rounds, repeats)
    table = "\n".join(
        [
            f"## Bursts of {BURST} concurrent lookups: the model in a thread vs in its own process, at the "
            "cache's CPU priority and below it",
            "",
            markdown_table(EMBEDDER_HEADERS, embedder_rows(totals)),
            "",
            f"{repeats} x (one mesh per row), alternating; each: {rounds} bursts of {BURST} lookups straight "
            f"to the cache (new text each, half paraphrases of 64 stored questions, {LOOKUP_TIMEOUT_S * 1000:.0f} ms "
            f"deadline) and {max(1, rounds // 2)} bursts of {BURST} temperature-0 requests through the router "
            "(synthetic engine; timeouts as the router's cache client counted them). Shipped settings but "
            "`serve: on`. A 'timeout' is a lookup not answered within the deadline; a lookup turned away "
            f"(embedder-busy) is a fast miss. {busy} processes spinning on the CPU meanwhile (--busy: other "
            f"work on the host, made repeatable). {time.monotonic() - started:.0f} s; load average at the end "
            f"{_load():.1f} on {_cores()} cores; the machine was shared with other work: compare the rows.",
        ]
    )
    write_results(
        "cache-embedders",
        {
            embedder: {
                "direct": {
                    "lookups": total["burst"].lookups,
                    "hits": total["burst"].hits,
                    "timeouts": total["burst"].timeouts,
                    "errors": total["burst"].errors,
                    "p50_ms": percentile(total["burst"].latency, 50) * 1000,
                    "p99_ms": percentile(total["burst"].latency, 99) * 1000,
                },
                "router": total["router"],
            }
            for embedder, total in totals.items()
        },
        table,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="bursts of 32 lookups per mesh")
    parser.add_argument(
        "--embedders-only",
        action="store_true",
        help="only the bursts, model in a thread vs its own process (bench/results/cache-embedders.*)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="with --embedders-only: mesh pairs to alternate")
    parser.add_argument("--busy", type=int, default=0, help="with --embedders-only: processes spinning meanwhile")
    args = parser.parse_args()
    if args.embedders_only:
        asyncio.run(compare_embedders(args.rounds, args.repeats, args.busy))
    else:
        asyncio.run(run(args.rounds))


if __name__ == "__main__":
    main()
