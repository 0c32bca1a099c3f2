"""Fallback, retry budget and circuit breakers over the real mesh, with
synthetic workers told to fail."""

from __future__ import annotations

import asyncio
import time

import grpc
import grpc.aio
import pytest
from prometheus_client import REGISTRY

from headrace.local.redis_server import RedisServer
from headrace.v1 import generation_pb2
from tests.support.mesh import start_mesh
from tests.support.routing import ask, generate_all, routing_settings, synthetic


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_failures_before_the_first_token_go_to_another_worker_then_the_fallback(
    redis_server: RedisServer,
) -> None:
    settings = routing_settings(
        redis_server.url,
        router={"max_attempts": 3},
        pools={
            "flaky": {"engine": synthetic(fail_rate=1.0), "workers": 2},
            "backup": {"engine": synthetic(), "workers": 1},
        },
        models={
            "main": {"default_version": "1", "versions": {"1": {"pool": "flaky"}}},
            "spare": {"default_version": "1", "versions": {"1": {"pool": "backup"}}},
        },
        default_model="main",
        routing={"fallbacks": {"main": ["spare"]}, "retry": {"backoff_base_ms": 1}},
    )
    mesh = await start_mesh(settings)
    try:
        call = mesh.router_stub().Generate(ask("main"))
        answer = await call
        headers = dict(await call.initial_metadata())
        assert answer.model == "spare@1" and answer.route.worker_id == "backup-0"
        # Two flaky workers, then the fallback.
        assert answer.route.attempts == 3
        assert answer.route.reason == "default,fallback:main@1"
        assert headers["x-headrace-model"] == "spare@1" and headers["x-headrace-route"] == "default,fallback:main@1"
    finally:
        await mesh.close()


async def test_with_no_worker_for_the_model_the_fallback_answers_at_once(redis_server: RedisServer) -> None:
    settings = routing_settings(
        redis_server.url,
        pools={"gone": {"engine": synthetic(), "workers": 0}, "backup": {"engine": synthetic()}},
        models={
            "main": {"default_version": "1", "versions": {"1": {"pool": "gone"}}},
            "spare": {"default_version": "1", "versions": {"1": {"pool": "backup"}}},
        },
        default_model="main",
        routing={"fallbacks": {"main": ["spare"]}, "retry": {"budget_capacity": 1, "budget_ratio": 0}},
    )
    mesh = await start_mesh(settings)
    try:
        # No worker did any work, so no retry budget is spent: all of them fall back.
        answers = await generate_all(mesh, [ask("main") for _ in range(5)])
        for answer in answers:
            assert isinstance(answer, generation_pb2.GenerateResponse)
            assert answer.model == "spare@1" and answer.route.attempts == 1
    finally:
        await mesh.close()


async def test_the_retry_budget_stops_a_retry_storm(redis_server: RedisServer) -> None:
    settings = routing_settings(
        redis_server.url,
        pools={"flaky": {"engine": synthetic(fail_rate=1.0), "workers": 2}},
        models={"main": {"default_version": "1", "versions": {"1": {"pool": "flaky"}}}},
        default_model="main",
        routing={
            "retry": {"budget_capacity": 2, "budget_ratio": 0, "budget_min_per_s": 0, "backoff_base_ms": 1},
            # Keep the breakers out of it: this is about the budget.
            "circuit_breaker": {"failure_threshold": 1000},
        },
    )
    mesh = await start_mesh(settings)
    retries_before = sample("headrace_router_retries_total", model="main@1", kind="worker")
    denied_before = sample("headrace_router_retries_denied_total", reason="budget")
    try:
        results = await generate_all(mesh, [ask("main") for _ in range(10)], concurrency=1)
        assert all(isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.UNAVAILABLE for r in results)
        # 10 requests failed; the budget allowed 2 retries and refused the other 8.
        assert sample("headrace_router_retries_total", model="main@1", kind="worker") - retries_before == 2
        assert sample("headrace_router_retries_denied_total", reason="budget") - denied_before == 8
        assert mesh.router.routing.budget.tokens < 1
    finally:
        await mesh.close()


async def test_a_failing_worker_is_cut_off_by_its_circuit(redis_server: RedisServer) -> None:
    settings = routing_settings(
        redis_server.url,
        pools={"gen": {"engine": synthetic(), "workers": 0}},
        models={"cbm": {"default_version": "1", "versions": {"1": {"pool": "gen"}}}},
        default_model="cbm",
        routing={"circuit_breaker": {"failure_threshold": 2, "open_s": 60}, "retry": {"backoff_base_ms": 1}},
    )
    mesh = await start_mesh(settings)
    try:
        sick = settings.model_copy(
            update={
                "pools": {
                    "gen": settings.pools["gen"].model_copy(
                        update={"engine": type(settings.pools["gen"].engine)(**synthetic(fail_rate=1.0))}
                    )
                }
            }
        )
        # Placement breaks ties by worker id: the sick gen-0 is tried first.
        await mesh.add_worker("gen", 0, settings=sick)
        await mesh.add_worker("gen", 1)
        await mesh.wait_for_workers(2)
        breakers = mesh.router.routing.worker_breakers
        # Pairs at once, so placement (least outstanding work) spreads them
        # over both workers whatever the last load reports said.
        deadline = time.monotonic() + 20
        while not breakers.blocked("gen-0") and time.monotonic() < deadline:
            for answer in await generate_all(mesh, [ask("cbm"), ask("cbm")], concurrency=2):
                # Every request is answered: a failure on gen-0 is retried on gen-1.
                assert isinstance(answer, generation_pb2.GenerateResponse)
                assert answer.route.worker_id == "gen-1" and answer.route.attempts in (1, 2)
        assert breakers.blocked("gen-0"), "two failures in a row open the circuit"
        answers = await generate_all(mesh, [ask("cbm") for _ in range(20)], concurrency=4)
        for answer in answers:
            assert isinstance(answer, generation_pb2.GenerateResponse)
            assert (answer.route.worker_id, answer.route.attempts) == ("gen-1", 1), "gen-0 is left out"
    finally:
        await mesh.close()


async def test_a_failure_after_the_first_token_is_not_retried_and_says_so(redis_server: RedisServer) -> None:
    settings = routing_settings(
        redis_server.url,
        pools={"breaks": {"engine": synthetic(fail_after_tokens=2), "workers": 2}, "backup": {"engine": synthetic()}},
        models={
            "main": {"default_version": "1", "versions": {"1": {"pool": "breaks"}}},
            "spare": {"default_version": "1", "versions": {"1": {"pool": "backup"}}},
        },
        default_model="main",
        routing={"fallbacks": {"main": ["spare"]}},
    )
    mesh = await start_mesh(settings)
    try:
        received: list[generation_pb2.GenerateStreamResponse] = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for chunk in mesh.router_stub().GenerateStream(ask("main", max_tokens=10)):
                received.append(chunk)
        assert len(received) == 2 and received[0].route.attempts == 1
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        details = caught.value.details() or ""
        assert details.startswith("generation failed after the first token on main@1 (worker breaks-")
        assert "after 2 tokens" in details
    finally:
        await mesh.close()


async def test_cancelling_mid_stream_leaves_breakers_alone(redis_server: RedisServer) -> None:
    settings = routing_settings(
        redis_server.url,
        pools={"gen": {"engine": synthetic(tokens_per_s=50)}},
        models={"cm": {"default_version": "1", "versions": {"1": {"pool": "gen"}}}},
        default_model="cm",
        routing={"circuit_breaker": {"failure_threshold": 1}},
    )
    mesh = await start_mesh(settings)
    try:
        for _ in range(3):
            call = mesh.router_stub().GenerateStream(ask("cm", max_tokens=100))
            async for _chunk in call:
                break
            call.cancel()
        await asyncio.sleep(0.2)
        answer = await mesh.router_stub().Generate(ask("cm"))
        assert answer.route.attempts == 1
        assert not mesh.router.routing.worker_breakers.open_keys()
        assert not mesh.router.routing.model_breakers.open_keys()
    finally:
        await mesh.close()
