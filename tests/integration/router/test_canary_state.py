"""Canary state in Redis, as router replicas share it: both see one step,
only one of two simultaneous judgements moves it, and stats are per step."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from headrace.local.redis_server import RedisServer
from headrace.runtime.routing_settings import CanarySettings
from services.router.routing.arm_stats import ArmStatsStore, Sample
from services.router.routing.canary import CanaryController, CanaryStatus
from services.router.routing.decision import RequestOutcome

_models = itertools.count()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def replica(redis: aioredis.Redis, model: str) -> CanaryController:
    settings = CanarySettings(version="2", steps=[10, 50], min_requests=3, min_baseline_requests=3)
    return CanaryController(model, "1", settings, redis, ArmStatsStore(redis), state_ttl_s=0.0)


def outcome(version: str, *, ok: bool = True) -> RequestOutcome:
    attempt = RequestOutcome.Attempt(
        model_version=version, worker_id="w", error="" if ok else "UNAVAILABLE", ttft_s=0.02, total_s=0.03
    )
    return RequestOutcome(attempts=(attempt,))


async def test_replicas_share_the_step_and_only_one_moves_it(redis: aioredis.Redis) -> None:
    model = f"shared{next(_models)}"
    a, b = replica(redis, model), replica(redis, model)
    state = await a.state()
    assert state is not None and state == await b.state()
    # Both replicas' outcomes add up in the same counters (2 + 1 each arm).
    for controller, count in ((a, 2), (b, 1)):
        for _ in range(count):
            await controller.observe(state, outcome(f"{model}@1"))
    await a.observe(state, outcome(f"{model}@2"))
    await a.observe(state, outcome(f"{model}@2"))
    assert (await a.state()) == state, "2 canary requests: not judged yet"
    # The third canary request lands without a judgement (as if its replica were slow to judge).
    await ArmStatsStore(redis).record(f"canary:{model}:{state.run}:0:canary", Sample(ok=True, ttft_ms=20.0))
    moved = await asyncio.gather(a.judge_step(state), b.judge_step(state))
    assert sum(m is not None for m in moved) == 1
    after_a, after_b = await a.state(), await b.state()
    assert after_a == after_b and after_a is not None
    assert after_a.step == 1 and after_a.status is CanaryStatus.RUNNING and after_a.reason.startswith("step 1/2")
    events = await a.events()
    assert len(events) == 1 and events[0]["step"] == 1
    # A late outcome routed in step 0 counts for step 0, not the new step.
    await b.observe(state, outcome(f"{model}@2", ok=False))
    snapshot = await a.snapshot()
    assert snapshot is not None and snapshot.canary_stats.requests == 0 and snapshot.share == 0.5


async def test_a_new_canary_version_starts_a_new_run(redis: aioredis.Redis) -> None:
    model = f"runs{next(_models)}"
    first = replica(redis, model)
    state = await first.state()
    assert state is not None and state.run == "1->2#1"
    bumped = CanaryController(
        model,
        "1",
        CanarySettings(version="2", steps=[10, 50], attempt=2),
        redis,
        ArmStatsStore(redis),
        state_ttl_s=0.0,
    )
    fresh = await bumped.state()
    assert fresh is not None and fresh.run == "1->2#2" and fresh.step == 0
