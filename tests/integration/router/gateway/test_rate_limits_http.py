"""Rate limits hold across router replicas (two gateways on one Redis) and
across APIs (HTTP and gRPC take from the same bucket); tokens are settled
with what answers really used."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest

from headrace.local.redis_server import RedisServer
from headrace.runtime.config import hash_api_key
from headrace.v1 import generation_pb2
from services.router.__main__ import RouterApp, build_router
from tests.integration.router.gateway.conftest import gateway_settings, running_gateway
from tests.support.mesh import InProcessMesh

ACME = {"authorization": "Bearer acme-key"}


def chat(max_tokens: int = 2) -> dict[str, Any]:
    return {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}


async def second_gateway(mesh: InProcessMesh) -> RouterApp:
    """Another router replica: its own limiter, the same Redis, scheduler and cache."""
    replica = build_router(
        mesh.settings,
        port=0,
        http_port=0,
        scheduler_target=mesh.scheduler_address,
        cache_target=mesh.cache_address,
    )
    assert replica.http is not None
    await replica.http.start()
    return replica


@pytest.fixture
async def limited(redis_server: RedisServer) -> AsyncIterator[InProcessMesh]:
    settings = gateway_settings(
        redis_server.url,
        tenants={
            "acme": {
                "api_key_sha256": [hash_api_key("acme-key")],
                "rate_limits": {"requests_per_minute": 3},
            },
            "globex": {"api_key_sha256": [hash_api_key("globex-key")]},
        },
    )
    async with running_gateway(settings) as mesh:
        yield mesh


async def test_two_gateways_and_the_grpc_api_share_one_limit(limited: InProcessMesh) -> None:
    replica = await second_gateway(limited)
    assert replica.http is not None
    try:
        async with (
            httpx.AsyncClient(base_url=limited.http_url, headers=ACME) as first,
            httpx.AsyncClient(base_url=replica.http.url, headers=ACME) as second,
        ):
            assert (await first.post("/v1/chat/completions", json=chat())).status_code == 200
            assert (await second.post("/v1/chat/completions", json=chat())).status_code == 200
            # The third of the minute, over gRPC.
            stub = limited.router_stub()
            request = generation_pb2.GenerateRequest(prompt="hi", sampling=generation_pb2.SamplingParams(max_tokens=2))
            await stub.Generate(request, metadata=(("authorization", "Bearer acme-key"),))
            # The bucket is empty on every replica and both APIs.
            for client in (first, second):
                response = await client.post("/v1/chat/completions", json=chat())
                assert response.status_code == 429 and response.headers["retry-after"] == "20"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Generate(request, metadata=(("authorization", "Bearer acme-key"),))
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert dict(caught.value.trailing_metadata() or ())["retry-after"] == "20"
            assert "3 requests per minute" in (caught.value.details() or "")
            # Another tenant is not limited (the top-level default: none).
            other = await second.post(
                "/v1/chat/completions", json=chat(), headers={"authorization": "Bearer globex-key"}
            )
            assert other.status_code == 200
    finally:
        await replica.close()


async def test_tokens_per_minute_count_what_answers_used(redis_server: RedisServer) -> None:
    # The synthetic engine counts a prompt's words as its tokens ("hi": 1)
    # and answers 32 tokens when max_tokens is not set.
    settings = gateway_settings(redis_server.url, rate_limits={"tokens_per_minute": 100})
    async with running_gateway(settings) as mesh, httpx.AsyncClient(base_url=mesh.http_url) as http:
        unbounded = {"messages": [{"role": "user", "content": "hi"}]}
        first = await http.post("/v1/chat/completions", json=unbounded)
        # Admitted on a 1-token reservation (no max_tokens); used 33.
        assert first.status_code == 200 and first.json()["usage"]["total_tokens"] == 33
        await asyncio.sleep(0.3)  # settled off the critical path: 67 left
        assert (await http.post("/v1/chat/completions", json=chat(max_tokens=60))).status_code == 200
        # 6 left: not enough for 21, though it would be had the first been
        # charged only its reservation.
        refused = await http.post("/v1/chat/completions", json=chat(max_tokens=20))
        assert refused.status_code == 429 and "100 tokens per minute" in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) >= 9
