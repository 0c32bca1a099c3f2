"""API keys on the gRPC API: checked in one interceptor for every RPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from headrace.local.redis_server import RedisServer
from headrace.runtime.config import hash_api_key
from headrace.v1 import generation_pb2, models_pb2
from tests.integration.test_mesh_grpc import greedy, mesh_settings
from tests.support.mesh import InProcessMesh, start_mesh


@pytest.fixture
async def mesh(redis_server: RedisServer) -> AsyncIterator[InProcessMesh]:
    settings = mesh_settings(
        redis_server.url,
        tenants={
            "acme": {"api_key_sha256": [hash_api_key("acme-key")]},
            "globex": {"api_key_sha256": [hash_api_key("globex-key")]},
        },
    )
    running = await start_mesh(settings)
    yield running
    await running.close()


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@pytest.mark.parametrize("metadata", [(), bearer("wrong"), (("authorization", "Basic x"),)])
async def test_every_rpc_needs_a_valid_key(mesh: InProcessMesh, metadata: tuple[tuple[str, str], ...]) -> None:
    stub = mesh.router_stub()
    calls = [
        stub.Generate(greedy("hi"), metadata=metadata),
        stub.ListModels(models_pb2.ListModelsRequest(), metadata=metadata),
        stub.Embed(generation_pb2.EmbedRequest(inputs=["x"]), metadata=metadata),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.GenerateStream(greedy("hi"), metadata=metadata):
            pass
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_valid_key_is_served_and_health_needs_none(mesh: InProcessMesh) -> None:
    answer = await mesh.router_stub().Generate(greedy("hi"), metadata=bearer("acme-key"))
    assert answer.usage.completion_tokens == 8
    health = health_pb2_grpc.HealthStub(mesh.channel(mesh.router_address))
    status = await health.Check(health_pb2.HealthCheckRequest(service="headrace.v1.Router"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING


async def test_tenants_never_share_cached_answers(mesh: InProcessMesh) -> None:
    stub = mesh.router_stub()
    await stub.Generate(greedy("same question"), metadata=bearer("acme-key"))
    await asyncio.sleep(0.2)
    again = await stub.Generate(greedy("same question"), metadata=bearer("acme-key"))
    assert again.route.cache == generation_pb2.CACHE_OUTCOME_HIT_EXACT
    other = await stub.Generate(greedy("same question"), metadata=bearer("globex-key"))
    assert other.route.cache == generation_pb2.CACHE_OUTCOME_MISS


async def test_a_client_cannot_claim_a_tenant_by_header(mesh: InProcessMesh) -> None:
    stub = mesh.router_stub()
    await stub.Generate(greedy("tenant spoof"), metadata=bearer("acme-key"))
    await asyncio.sleep(0.2)
    spoof = await stub.Generate(greedy("tenant spoof"), metadata=(*bearer("globex-key"), ("x-headrace-tenant", "acme")))
    assert spoof.route.cache == generation_pb2.CACHE_OUTCOME_MISS
