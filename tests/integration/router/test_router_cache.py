"""The router and the cache, in the whole mesh (real gRPC, real Redis, the
real MiniLM in the cache, the synthetic engine behind): lookup before
placement, store after the answer, hits streamed in their deltas, how each
answer was served in metadata, metrics and the trace."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from headrace.local.redis_server import RedisServer
from headrace.v1 import cache_pb2, generation_pb2
from services.cache.embedder import MiniLmEncoder
from tests.integration.test_mesh_grpc import mesh_settings
from tests.support.mesh import InProcessMesh, start_mesh

pytestmark = pytest.mark.slow


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def mesh(
    redis_server: RedisServer, minilm: MiniLmEncoder, exporter: InMemorySpanExporter
) -> AsyncIterator[InProcessMesh]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # Served whatever the calibration says, and with time to embed on a busy
    # test host: these tests check the path, not a saturated model.
    settings = mesh_settings(
        redis_server.url,
        cache={
            "metrics_port": None,
            "lookup_timeout_s": 30.0,
            "semantic": {"serve": "on", "lookup_embed_budget_ms": 20_000},
        },
    )
    # Entries of earlier tests (which share this Redis) out of the way first.
    flusher = aioredis.Redis.from_url(redis_server.url)
    for key in await flusher.keys("hr:cache:v1:*"):
        await flusher.delete(key)
    await flusher.aclose()
    running = await start_mesh(settings, tracer_provider=provider, encoder=minilm)
    yield running
    await running.close()


def ask(text: str, **kwargs: object) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        messages=[generation_pb2.ChatMessage(role="user", content=text)],
        sampling=generation_pb2.SamplingParams(temperature=0.0, max_tokens=6),
        **kwargs,  # type: ignore[arg-type]
    )


async def stored_in_background(mesh: InProcessMesh, entries: int = 1) -> None:
    """The router stores off the critical path: wait until Redis holds it."""
    for _ in range(2000):
        if len(await mesh.redis.keys("hr:cache:v1:entry:*")) >= entries:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("the answer was not stored")


def counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("headrace_router_cache_total", {"outcome": outcome}) or 0.0


async def test_a_streamed_hit_replays_the_deltas_and_says_it_was_cached(mesh: InProcessMesh) -> None:
    stub = mesh.router_stub()
    call = stub.GenerateStream(ask("How do I reset my password?"))
    first = [c async for c in call]
    assert dict(await call.initial_metadata())["x-headrace-cache"] == "miss"
    assert len(first) == 6
    await stored_in_background(mesh)
    misses, hits = counted("miss"), counted("hit-exact")

    call = stub.GenerateStream(ask("How do I reset my password?"))
    again = [c async for c in call]
    assert dict(await call.initial_metadata())["x-headrace-cache"] == "hit-exact"
    assert [c.text for c in again] == [c.text for c in first]
    assert [list(c.token_ids) for c in again] == [list(c.token_ids) for c in first]
    assert again[0].route.cache == generation_pb2.CACHE_OUTCOME_HIT_EXACT
    assert again[0].route.cache_entry_id and again[0].route.cache_similarity == 1.0
    assert again[0].route.worker_id == ""  # no worker was asked
    assert again[-1].finish_reason == first[-1].finish_reason and again[-1].cost.usd == 0
    assert counted("hit-exact") == hits + 1 and counted("miss") == misses


async def test_a_paraphrase_is_served_from_the_semantic_cache(
    mesh: InProcessMesh, exporter: InMemorySpanExporter
) -> None:
    stub = mesh.router_stub()
    original = await stub.Generate(ask("Explain how photosynthesis works."))
    await stored_in_background(mesh)
    exporter.clear()
    call = stub.Generate(ask("Can you explain how photosynthesis works?"))
    answer = await call
    assert dict(await call.initial_metadata())["x-headrace-cache"] == "hit-semantic"
    assert answer.text == original.text
    assert answer.route.cache == generation_pb2.CACHE_OUTCOME_HIT_SEMANTIC
    assert 0.8 <= answer.route.cache_similarity < 1.0 and answer.route.cache_entry_id
    assert answer.route.cache_verdict == "lexical:accept"
    header = dict(await call.initial_metadata())["x-headrace-cache-similarity"]
    assert header == f"{answer.route.cache_similarity:.4f}; verdict=lexical:accept"
    spans = {span.name: span for span in exporter.get_finished_spans()}
    router = spans["/headrace.v1.Router/Generate"].attributes or {}
    assert router["headrace.cache"] == "hit-semantic"
    assert router["headrace.cache.entry_id"] == answer.route.cache_entry_id
    assert router["headrace.cache.verdict"] == "lexical:accept"
    cache = spans["/headrace.v1.Cache/Lookup"].attributes or {}
    assert cache["headrace.cache.outcome"] == "hit-semantic"
    assert cache["headrace.cache.verdict"] == "accept" and cache["headrace.cache.verifier"] == "lexical"
    assert "/headrace.v1.Worker/Complete" not in spans and "/headrace.v1.Worker/Generate" not in spans


async def test_a_miss_is_on_the_trace_too(mesh: InProcessMesh, exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    await mesh.router_stub().Generate(ask("Name a river in Peru."))
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert (spans["/headrace.v1.Router/Generate"].attributes or {})["headrace.cache"] == "miss"
    assert (spans["/headrace.v1.Cache/Lookup"].attributes or {})["headrace.cache.outcome"] == "miss"


async def test_invalidate_cache_through_the_router_is_scoped_to_the_caller(mesh: InProcessMesh) -> None:
    stub = mesh.router_stub()
    await stub.Generate(ask("What does doc 7 say?", tags=["doc-7"]))
    await stored_in_background(mesh)
    assert (await stub.Generate(ask("What does doc 7 say?"))).route.cache == generation_pb2.CACHE_OUTCOME_HIT_EXACT
    # A tenant field in the request is ignored: the router uses the caller's.
    other = await stub.InvalidateCache(cache_pb2.InvalidateRequest(tenant="someone-else", tags=["doc-7"]))
    assert other.removed == 1
    assert (await stub.Generate(ask("What does doc 7 say?"))).route.cache == generation_pb2.CACHE_OUTCOME_MISS
