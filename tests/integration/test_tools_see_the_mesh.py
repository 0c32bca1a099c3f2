"""Tools work unchanged against the mesh: gRPC reflection lists every
service and resolves each method's request and response types (what
grpcurl `describe` and calls need, without -proto), a failed reflection
call logs nothing (keepalive: tests/integration/test_keepalive.py)."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from headrace.local.redis_server import RedisServer
from tests.integration.test_mesh_grpc import mesh_settings
from tests.support.mesh import start_mesh
from tests.support.otlp_receiver import otlp_receiver

EXPECTED = {
    "router": "headrace.v1.Router",
    "cache": "headrace.v1.Cache",
    "scheduler": "headrace.v1.Scheduler",
    "worker": "headrace.v1.Worker",
}


def describe(address: str) -> dict[str, dict[str, tuple[str, str]]]:
    """What grpcurl sees: every service by reflection, each method's types
    resolved through reflection too (nothing from this process's protos)."""
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = DescriptorPool(database)
        found = {}
        for name in database.get_services():
            service = pool.FindServiceByName(name)
            found[name] = {
                method.name: (method.input_type.full_name, method.output_type.full_name) for method in service.methods
            }
        # A failed lookup, as `grpcurl describe nope.Nope` makes.
        with pytest.raises(KeyError):
            pool.FindMessageTypeByName("nope.Nope")
        return found


async def test_reflection_describes_every_service_of_every_server(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with otlp_receiver() as receiver:  # tracing on, as deployed
        mesh = await start_mesh(mesh_settings(redis_server.url), tracer_provider=receiver.provider("headrace-mesh"))
        try:
            addresses = {
                "router": mesh.router_address,
                "cache": mesh.cache_address,
                "scheduler": mesh.scheduler_address,
                "worker": mesh.workers[0].address,
            }
            seen = {name: await asyncio.to_thread(describe, address) for name, address in addresses.items()}
        finally:
            await mesh.close()
    for server, service in EXPECTED.items():
        services = seen[server]
        assert {service, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(services)
        assert all(i and o for i, o in services[service].values()), services[service]
    router = seen["router"]["headrace.v1.Router"]
    assert router["Generate"] == ("headrace.v1.GenerateRequest", "headrace.v1.GenerateResponse")
    assert router["GenerateStream"] == ("headrace.v1.GenerateRequest", "headrace.v1.GenerateStreamResponse")
    assert {"Embed", "ListModels", "SubmitBatch", "GetBatch", "CancelBatch", "StreamBatchResults"} <= set(router)
    # No "Failed to detach context" (nor anything else) from the reflection calls.
    assert not [r for r in caplog.records if "detach" in r.getMessage().lower() or r.exc_info], caplog.text
