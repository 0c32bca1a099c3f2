"""A/B splits over the real mesh: sticky per user, both arms served, and
per-arm results readable from ListModels."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc.aio

from headrace.local.redis_server import RedisServer
from headrace.v1 import generation_pb2
from tests.support.mesh import start_mesh
from tests.support.routing import ask, generate_all, model_info, routing_settings, synthetic


async def test_users_stick_to_their_arm_and_each_arm_reports_its_results(redis_server: RedisServer) -> None:
    settings = routing_settings(
        redis_server.url,
        pools={
            "a": {"engine": synthetic(), "price_per_hour": 3.6},
            "b": {"engine": synthetic(), "price_per_hour": 7.2},
        },
        models={"abm": {"default_version": "1", "versions": {"1": {"pool": "a"}, "2": {"pool": "b"}}}},
        aliases={"exp": "abm"},
        default_model="abm",
        routing={
            "routes": {
                "exp": {
                    "policies": [
                        {
                            "kind": "ab",
                            "experiment": "abm-v2",
                            "sticky": "user",
                            "arms": [
                                {"name": "control", "target": "abm@1", "weight": 50},
                                {"name": "treatment", "target": "abm@2", "weight": 50},
                            ],
                        }
                    ]
                }
            }
        },
    )
    mesh = await start_mesh(settings)
    try:
        users = [f"user-{i}" for i in range(20)]
        calls = [mesh.router_stub().Generate(ask("exp", user=user)) for user in users for _ in range(3)]
        answers = await asyncio.gather(*(call for call in calls))
        headers = [dict(await call.initial_metadata()) for call in calls]
        arms_by_user: dict[str, set[str]] = {}
        for user_index, answer in enumerate(answers):
            arms_by_user.setdefault(users[user_index // 3], set()).add(answer.model)
        assert all(len(arms) == 1 for arms in arms_by_user.values()), arms_by_user
        served = Counter(next(iter(arms)) for arms in arms_by_user.values())
        assert set(served) == {"abm@1", "abm@2"}
        for answer, header in zip(answers, headers, strict=True):
            arm_name = "control" if answer.model == "abm@1" else "treatment"
            assert header["x-headrace-route"] == f"alias:exp,ab:abm-v2/{arm_name}"
            assert header["x-headrace-model"] == answer.model
        # Results are recorded off the critical path; wait for all 60.
        for _ in range(600):
            info = await model_info(mesh, "exp")
            if sum(arm.requests for arm in info.arms) == 60:
                break
            await asyncio.sleep(0.05)
        assert list(info.policies) == ["ab:abm-v2"]
        arms = {arm.arm: arm for arm in info.arms}
        assert arms["control"].requests == 3 * served["abm@1"] and arms["treatment"].requests == 3 * served["abm@2"]
        for arm in arms.values():
            assert arm.policy == "ab:abm-v2" and arm.weight == 50 and arm.errors == 0
            assert arm.completion_tokens == 2 * arm.requests
            assert arm.cost_usd > 0 and arm.ttft_p95_ms > 0 and arm.mean_total_ms > 0
        assert arms["treatment"].target == "abm@2"
    finally:
        await mesh.close()


async def test_arm_errors_are_counted(redis_server: RedisServer) -> None:
    settings = routing_settings(
        redis_server.url,
        pools={"ok": {"engine": synthetic()}, "broken": {"engine": synthetic(fail_rate=1.0)}},
        models={"abe": {"default_version": "1", "versions": {"1": {"pool": "ok"}, "2": {"pool": "broken"}}}},
        aliases={"exp2": "abe"},
        default_model="abe",
        routing={
            "routes": {
                "exp2": {
                    "policies": [
                        {
                            "kind": "ab",
                            "arms": [
                                {"name": "good", "target": "abe@1", "weight": 1},
                                {"name": "bad", "target": "abe@2", "weight": 1},
                            ],
                        }
                    ]
                }
            }
        },
    )
    mesh = await start_mesh(settings)
    try:
        results = await generate_all(mesh, [ask("exp2", user=f"u{i}") for i in range(24)])
        failures = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert failures and all(f.code() == grpc.StatusCode.UNAVAILABLE for f in failures)
        assert all(r.model == "abe@1" for r in results if isinstance(r, generation_pb2.GenerateResponse))
        for _ in range(600):
            arms = {arm.arm: arm for arm in (await model_info(mesh, "exp2")).arms}
            if arms["good"].requests + arms["bad"].requests == 24:
                break
            await asyncio.sleep(0.05)
        assert arms["bad"].errors == arms["bad"].requests == len(failures)
        assert arms["good"].errors == 0
    finally:
        await mesh.close()
