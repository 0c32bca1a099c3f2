"""Places made beside cache lookups, coalesced (Scheduler.PlaceNowMany),
with their neighbours: concurrent requests, cache hits among them, and
batch leases holding every slot (real gRPC, real Redis, the exact cache,
the synthetic engine)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from headrace.local.redis_server import RedisServer
from headrace.runtime.config import Settings
from headrace.v1 import generation_pb2, scheduler_pb2
from tests.support.mesh import InProcessMesh, start_mesh

POOL = "gen"
SLOTS = 4


def settings(redis_url: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        pools={
            POOL: {
                "engine": {"kind": "synthetic", "ttft_ms": 1, "tokens_per_s": 400, "max_concurrency": SLOTS},
                "workers": 1,
            }
        },
        models={"gen": {"default_version": "1", "versions": {"1": {"pool": POOL}}}},
        default_model="gen",
        scheduler={"metrics_port": None, "pools": {POOL: {"batch_queue_ahead": 0, "engine_queue_slots": 0}}},
        router={"metrics_port": None},
        cache={"metrics_port": None, "semantic": {"enabled": False}},
        worker={"metrics_port_offset": None},
    )


@pytest.fixture
async def mesh(redis_server: RedisServer) -> AsyncIterator[InProcessMesh]:
    running = await start_mesh(settings(redis_server.url))
    await running.redis.flushdb()
    yield running
    await running.close()


def ask(text: str) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        prompt=text, sampling=generation_pb2.SamplingParams(temperature=0.0, max_tokens=4)
    )


def place_now_many_calls() -> float:
    value = REGISTRY.get_sample_value(
        "headrace_grpc_server_handled_total", {"method": "/headrace.v1.Scheduler/PlaceNowMany", "code": "OK"}
    )
    return value or 0.0


async def test_concurrent_requests_beside_batch_leases_each_get_their_own_answer_at_once(mesh: InProcessMesh) -> None:
    router = mesh.router_stub()
    # One answer the cache holds: its repeats below are hits.
    stored = await router.Generate(ask("a stored question"))
    for _ in range(500):
        if (await router.Generate(ask("a stored question"))).route.cache == generation_pb2.CACHE_OUTCOME_HIT_EXACT:
            break
        await asyncio.sleep(0.01)
    # Batch rows hold every slot of the worker.
    scheduler = mesh.scheduler_stub()
    batch = [
        await scheduler.Place(
            scheduler_pb2.PlaceRequest(
                request_id=f"row-{n}",
                model_version="gen@1",
                tenant="batch-tenant",
                priority=generation_pb2.PRIORITY_BATCH,
                worker_id=f"{POOL}-0",
                max_tokens=4,
            ),
            timeout=5,
        )
        for n in range(SLOTS)
    ]
    before = place_now_many_calls()
    prompts = [f"new question {n}" for n in range(16)]
    calls = [router.Generate(ask(p), timeout=30) for p in prompts]
    hits = [router.Generate(ask("a stored question"), timeout=30) for _ in range(4)]
    answers_and_hits = await asyncio.gather(*calls, *hits)
    answers, hit_answers = answers_and_hits[: len(prompts)], answers_and_hits[len(prompts) :]
    # Online first: every request answered while batch rows held every slot
    # (the engine runs online work ahead of them), the places beside their
    # lookups asked together, not one call each.
    assert place_now_many_calls() > before
    assert all(h.route.cache == generation_pb2.CACHE_OUTCOME_HIT_EXACT and h.text == stored.text for h in hit_answers)
    assert [a.route.cache for a in answers] == [generation_pb2.CACHE_OUTCOME_MISS] * len(prompts)
    assert all(a.usage.completion_tokens == 4 for a in answers)
    # Each its own answer: the same prompt asked alone again (a hit now)
    # gives the same text, and no two prompts share one.
    for prompt, answer in zip(prompts, answers, strict=True):
        assert (await router.Generate(ask(prompt))).text == answer.text, prompt
    assert len({a.text for a in answers}) == len(prompts)
    # The batch rows' leases were not disturbed; given back, none is left.
    assert all(mesh.dispatcher.leases.get(p.lease.lease_id) is not None for p in batch)
    for placed in batch:
        await scheduler.Release(scheduler_pb2.ReleaseRequest(lease_id=placed.lease.lease_id))
    for _ in range(200):
        if len(mesh.dispatcher.leases) == 0:
            break
        await asyncio.sleep(0.01)
    assert len(mesh.dispatcher.leases) == 0
