"""What a gRPC server answers to bytes that are not its request, and to a
dependency that fails every call: a status with a message, never UNKNOWN
or INTERNAL, and no traceback per call in the log."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2

from headrace.local.redis_server import free_port
from headrace.runtime.config import LimitSettings, Settings
from headrace.runtime.server import GrpcServiceHost, ServiceRegistration
from headrace.v1 import cache_pb2, cache_pb2_grpc, generation_pb2
from services.cache.__main__ import build_cache

ECHO = "/test.Echo/Chat"


async def echo_chat(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    async for request in requests:
        yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING if request.service else 0)


def add_echo(server: grpc.aio.Server) -> None:
    # A client-streaming method, like Scheduler.ReportLoad.
    handler = grpc.stream_stream_rpc_method_handler(
        echo_chat,
        request_deserializer=health_pb2.HealthCheckRequest.FromString,
        response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", {"Chat": handler}),))


async def test_undecodable_requests_are_invalid_argument_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    echo = ServiceRegistration("test.Echo", add_echo)
    host = GrpcServiceHost([echo], host="127.0.0.1", port=0, limits=LimitSettings(), identity=None)
    port = await host.start()
    garbage = b"\xff\xff\xff\xff\x0f"
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with caplog.at_level(logging.INFO):
                for _ in range(50):
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await channel.unary_unary("/grpc.health.v1.Health/Check")(garbage, timeout=5)
                    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert caught.value.details() == (
                        "request message: not a valid grpc.health.v1.HealthCheckRequest (5 bytes: DecodeError)"
                    )
                # Server streaming: refused before the first answer.
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    async for _answer in channel.unary_stream("/grpc.health.v1.Health/Watch")(garbage, timeout=5):
                        pass
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                # Client streaming: the good messages are answered, the bad one ends the call.
                good = health_pb2.HealthCheckRequest(service="x").SerializeToString()
                call = channel.stream_stream(ECHO)(iter([good, garbage, good]), timeout=5)
                answers = []
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    async for answer in call:
                        answers.append(answer)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert len(answers) == 1
                # And a good request still works.
                answer = await channel.unary_unary("/grpc.health.v1.Health/Check")(
                    health_pb2.HealthCheckRequest().SerializeToString(), timeout=5
                )
                assert (
                    health_pb2.HealthCheckResponse.FromString(answer).status == health_pb2.HealthCheckResponse.SERVING
                )
    finally:
        await host.stop(0)
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []


async def test_the_cache_with_redis_down_is_unavailable_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    # Nothing listens on this port: every Redis call fails at once.
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    settings = Settings(cache={"semantic": {"enabled": False}})
    app = build_cache(settings, client, port=0)
    port = await app.host.start()
    lookup = cache_pb2.CacheLookupRequest(
        tenant="acme",
        model_version="smollm2@1",
        request=generation_pb2.GenerateRequest(
            # Greedy: a request the cache looks up (others bypass it).
            prompt="hi",
            model="smollm2",
            sampling=generation_pb2.SamplingParams(temperature=0.0),
        ),
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = cache_pb2_grpc.CacheStub(channel)
            with caplog.at_level(logging.INFO):
                for _ in range(30):
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await stub.Lookup(lookup, timeout=5)
                    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert "the cache's store is unavailable" in (caught.value.details() or "")
                    assert dict(caught.value.trailing_metadata() or ())["retry-after"] == "1"
    finally:
        await app.host.stop(0)
        await app.close()
        await client.aclose()
    outage_lines = [r for r in caplog.records if "cache store (Redis) unavailable" in r.getMessage()]
    assert len(outage_lines) == 1
    assert not any(r.exc_info for r in caplog.records)
