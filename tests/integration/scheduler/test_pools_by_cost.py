"""One model version served by two pools of different price and speed,
through the whole mesh: requests go to the cheaper pool per token while its
queue keeps the SLO, spill to the other when it would not, and each answer
is charged at the price of the pool that served it."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from headrace.local.redis_server import RedisServer
from headrace.v1 import generation_pb2
from tests.integration.test_mesh_grpc import greedy, mesh_settings
from tests.support.mesh import InProcessMesh, start_mesh

# "cheap": slow but cheaper per token (0.036 USD/h at 20 tok/s = 0.5 USD per
# million tokens); "fast": dearer per token (3.6 USD/h at 1,000 tok/s = 1.0).
POOLS = {
    "cheap": {
        "engine": {"kind": "synthetic", "ttft_ms": 5, "tokens_per_s": 20, "max_concurrency": 2},
        "price_per_hour": 0.036,
        "throughput_tokens_per_s": 20,
    },
    "fast": {
        "engine": {"kind": "synthetic", "ttft_ms": 5, "tokens_per_s": 1000, "max_concurrency": 8},
        "price_per_hour": 3.6,
        "throughput_tokens_per_s": 1000,
    },
}
MODELS = {"smollm2": {"default_version": "1", "versions": {"1": {"pool": "cheap", "also_pools": ["fast"]}}}}
SCHEDULER = {
    "metrics_port": None,
    "pools": {name: {"autoscale": {"queue_wait_slo_s": 0.2}} for name in POOLS},
}


@pytest.fixture
async def mesh(redis_server: RedisServer) -> AsyncIterator[InProcessMesh]:
    settings = mesh_settings(redis_server.url, pools=POOLS, models=MODELS, scheduler=SCHEDULER)
    running = await start_mesh(settings)
    yield running
    await running.close()


def pool_of(answer: generation_pb2.GenerateResponse) -> str:
    return answer.route.worker_id.rsplit("-", 1)[0]


async def test_the_cheaper_pool_first_then_spill_and_each_answer_at_its_pools_price(mesh: InProcessMesh) -> None:
    stub = mesh.router_stub()
    # One at a time: the cheaper pool always has a free slot.
    alone = [await stub.Generate(greedy(f"alone {i}", max_tokens=4)) for i in range(4)]
    assert {pool_of(a) for a in alone} == {"cheap"}

    # A burst its 2 slots would take seconds to drain (each answer ~1 s):
    # past the 0.2 s SLO, the rest spills to the fast pool.
    burst = await asyncio.gather(*(stub.Generate(greedy(f"burst {i}", max_tokens=20)) for i in range(16)))
    served = Counter(pool_of(a) for a in burst)
    assert served["cheap"] >= 2 and served["fast"] >= 8, served

    for answer in [*alone, *burst]:
        price = POOLS[pool_of(answer)]["price_per_hour"]
        assert answer.cost.engine_seconds > 0
        assert answer.cost.usd == pytest.approx(answer.cost.engine_seconds * price / 3600.0, rel=1e-6)


@pytest.fixture
async def autoscaled_mesh(redis_server: RedisServer) -> AsyncIterator[InProcessMesh]:
    scaling = {"enabled": True, "queue_wait_slo_s": 0.2, "window_s": 2.0, "scale_up_cooldown_s": 0.0}
    scheduler = {
        "metrics_port": None,
        "pools": {
            "cheap": {"autoscale": {**scaling, "max_workers": 10}},
            "fast": {"autoscale": {**scaling, "max_workers": 4}},
        },
    }
    # The dearer pool slow enough that the spill keeps it busy (sized alone,
    # it would grow): 0.72 USD/h at 200 tok/s = 1.0 USD per million tokens.
    pools = {
        **POOLS,
        "fast": {
            "engine": {"kind": "synthetic", "ttft_ms": 5, "tokens_per_s": 100, "max_concurrency": 2},
            "price_per_hour": 0.72,
            "throughput_tokens_per_s": 200,
        },
    }
    settings = mesh_settings(redis_server.url, pools=pools, models=MODELS, scheduler=scheduler)
    running = await start_mesh(settings)
    yield running
    await running.close()


async def test_a_spill_grows_the_cheaper_pool_not_the_one_it_spilled_to(autoscaled_mesh: InProcessMesh) -> None:
    stub = autoscaled_mesh.router_stub()
    dispatcher = autoscaled_mesh.dispatcher
    peak = {"cheap": 0, "fast": 0}

    async def watch() -> None:
        while True:
            for pool in peak:
                peak[pool] = max(peak[pool], dispatcher.autoscaling.decision(pool, 1).desired)
            await asyncio.sleep(0.05)

    # A few alone first: the cheap pool's expected wait needs answers timed
    # (prompts of their own: the other test's answers are in the cache).
    for i in range(4):
        await stub.Generate(greedy(f"warm-up {i}", max_tokens=4))
    watcher = asyncio.create_task(watch())
    burst = await asyncio.gather(*(stub.Generate(greedy(f"spill {i}", max_tokens=20)) for i in range(16)))
    watcher.cancel()
    # The burst did spill: the fast pool served part of it, and the demand
    # it brought was counted against the cheap pool, which can still grow.
    served = Counter(pool_of(a) for a in burst)
    assert served["fast"] >= 4, (served, peak)
    assert peak["cheap"] > 1, peak
    assert peak["fast"] == 1, f"the pool spilled to grew while the cheaper one could: {peak}"
