"""Canaries over the real mesh: a version that fails, is slow or costs
more rolls itself back; a healthy one is promoted. State lives in Redis:
another router replica (or a restarted one) sees the same step."""

from __future__ import annotations

from typing import Any

import pytest

from headrace.local.redis_server import RedisServer
from headrace.runtime.config import Settings
from headrace.v1 import generation_pb2, models_pb2
from services.router.__main__ import build_router
from tests.support.mesh import InProcessMesh, start_mesh
from tests.support.routing import ask, generate_all, model_info, routing_settings, synthetic

# Enough requests for two steps at these minimums; a canary that is still
# running after this many has failed the test.
MAX_REQUESTS = 600
# For canaries that run the same engine as their stable version: only a
# real difference may fail them, not a busy test machine (engine time, and
# so cost, of a few milliseconds' requests varies by 2x under load).
GENEROUS = {"ttft_p95_ratio": 10.0, "ttft_p95_slack_ms": 5000, "cost_ratio": 5.0}


def canary_settings(redis_url: str, model: str, canary_pool: dict[str, Any], slo: dict[str, Any]) -> Settings:
    return routing_settings(
        redis_url,
        pools={"stable": {"engine": synthetic(), "price_per_hour": 3.6}, "canary": canary_pool},
        models={
            model: {"default_version": "1", "versions": {"1": {"pool": "stable"}, "2": {"pool": "canary"}}},
        },
        default_model=model,
        routing={
            "canaries": {
                model: {"version": "2", "steps": [30, 60], "min_requests": 12, "min_baseline_requests": 12, "slo": slo}
            },
            # Failed canary attempts are answered by the stable version.
            "fallbacks": {model: [f"{model}@1"]},
            "state_ttl_s": 0.05,
        },
    )


async def drive_until_decided(mesh: InProcessMesh, model: str) -> tuple[models_pb2.ModelInfo, list[str]]:
    """Requests from distinct users, in rounds, until the canary is no longer running."""
    served: list[str] = []
    for round_start in range(0, MAX_REQUESTS, 16):
        answers = await generate_all(mesh, [ask(model, user=f"user-{i}") for i in range(round_start, round_start + 16)])
        for answer in answers:
            assert isinstance(answer, generation_pb2.GenerateResponse), f"a client saw an error: {answer}"
            served.append(answer.model)
        info = await model_info(mesh, model)
        if info.canary.state != models_pb2.CANARY_STATE_RUNNING:
            return info, served
    raise AssertionError(f"canary still running after {MAX_REQUESTS} requests: {info.canary}")


@pytest.mark.parametrize(
    ("model", "canary_pool", "breach"),
    [
        ("canfail", {"engine": synthetic(fail_rate=0.7), "price_per_hour": 3.6}, "error rate"),
        ("canslow", {"engine": synthetic(ttft_ms=4, slowdown=60), "price_per_hour": 3.6}, "TTFT p95"),
        ("canpricey", {"engine": synthetic(), "price_per_hour": 36.0}, "cost per request"),
    ],
)
async def test_a_bad_canary_rolls_itself_back_and_says_why(
    redis_server: RedisServer, model: str, canary_pool: dict[str, Any], breach: str
) -> None:
    settings = canary_settings(redis_server.url, model, canary_pool, slo={"ttft_p95_slack_ms": 20})
    mesh = await start_mesh(settings)
    try:
        info, served = await drive_until_decided(mesh, model)
        canary = info.canary
        assert canary.state == models_pb2.CANARY_STATE_ROLLED_BACK, canary
        assert canary.share == 0.0 and canary.step == 1
        assert canary.reason.startswith("rolled back at step 1/2 (30%)") and breach in canary.reason, canary.reason
        assert info.resolves_to == f"{model}@1" and f"canary:{model}" in info.policies
        assert canary.canary_stats.requests >= 12 and canary.stable_stats.requests >= 12
        assert f"{model}@2" in served or breach == "error rate", "the canary did serve before it was judged"
        # From now on everything goes to the stable version, without a canary mark.
        answers = await generate_all(mesh, [ask(model, user=f"after-{i}") for i in range(16)])
        for answer in answers:
            assert isinstance(answer, generation_pb2.GenerateResponse)
            assert answer.model == f"{model}@1" and answer.route.reason == "default"
        # Another router replica on the same Redis sees the rollback.
        replica = build_router(
            settings, port=0, scheduler_target=mesh.scheduler_address, cache_target=mesh.cache_address
        )
        snapshot = await replica.routing.describe(model, f"{model}@1")
        await replica.close()
        assert snapshot.canary is not None and snapshot.canary.state.reason == canary.reason
    finally:
        await mesh.close()


async def test_a_healthy_canary_is_promoted_step_by_step(redis_server: RedisServer) -> None:
    model = "canok"
    settings = canary_settings(redis_server.url, model, {"engine": synthetic(), "price_per_hour": 3.6}, slo=GENEROUS)
    mesh = await start_mesh(settings)
    try:
        first = await model_info(mesh, model)
        assert first.canary.state == models_pb2.CANARY_STATE_RUNNING and first.canary.share == pytest.approx(0.3)
        info, served = await drive_until_decided(mesh, model)
        assert info.canary.state == models_pb2.CANARY_STATE_PROMOTED, info.canary
        assert info.canary.reason.startswith("promoted after step 2/2 (60%)")
        assert info.canary.share == 1.0 and info.resolves_to == f"{model}@2"
        assert (info.pool, info.ready_workers) == ("canary", 1)
        assert 0 < served.count(f"{model}@2") < len(served)
        answers = await generate_all(mesh, [ask(model, user=f"after-{i}") for i in range(8)])
        for answer in answers:
            assert isinstance(answer, generation_pb2.GenerateResponse)
            assert (answer.model, answer.route.reason) == (f"{model}@2", "default,canary-promoted")
        # A client pinning the old version still gets it.
        pinned = await mesh.router_stub().Generate(ask(f"{model}@1"))
        assert pinned.model == f"{model}@1" and pinned.route.reason == "pinned"
    finally:
        await mesh.close()


async def test_a_restarted_router_carries_on_at_the_same_step(redis_server: RedisServer) -> None:
    model = "canrestart"
    settings = canary_settings(redis_server.url, model, {"engine": synthetic(), "price_per_hour": 3.6}, slo=GENEROUS)
    mesh = await start_mesh(settings)
    try:
        # Step 1 passes (or the test machine is badly overloaded); then a new router replaces the old one.
        for start in range(0, MAX_REQUESTS, 16):
            await generate_all(mesh, [ask(model, user=f"u-{i}") for i in range(start, start + 16)])
            if (await model_info(mesh, model)).canary.step == 2:
                break
        assert (await model_info(mesh, model)).canary.step == 2
        restarted = build_router(
            settings, port=0, scheduler_target=mesh.scheduler_address, cache_target=mesh.cache_address
        )
        snapshot = await restarted.routing.describe(model, f"{model}@1")
        await restarted.close()
        assert snapshot.canary is not None
        assert snapshot.canary.state.step == 1 and snapshot.canary.share == pytest.approx(0.6)
    finally:
        await mesh.close()
