"""The Worker gRPC service in front of the real vLLM engine: a caller that
cancels or disconnects mid-stream frees the engine's sequence, as the
engine itself counts its running sequences."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import grpc
import grpc.aio
import pytest
import pytest_asyncio

from headrace.runtime.config import LimitSettings
from headrace.runtime.server import GrpcServiceHost, ServiceRegistration
from headrace.v1 import generation_pb2, worker_pb2, worker_pb2_grpc
from services.worker.engines.vllm_engine import VllmEngine
from services.worker.server import WorkerServicer

pytestmark = pytest.mark.slow

_ids = iter(range(1_000_000))


@pytest_asyncio.fixture(loop_scope="session")
async def worker_address(vllm_engine: VllmEngine) -> AsyncIterator[str]:
    servicer = WorkerServicer(vllm_engine, model_versions=["smollm2@1"], limits=LimitSettings())
    host = GrpcServiceHost(
        [
            ServiceRegistration(
                "headrace.v1.Worker", lambda s: worker_pb2_grpc.add_WorkerServicer_to_server(servicer, s)
            )
        ],
        host="127.0.0.1",
        port=0,
        limits=LimitSettings(),
        identity=None,
    )
    port = await host.start()
    yield f"127.0.0.1:{port}"
    await host.stop(grace_s=0)


def long_request() -> worker_pb2.WorkerGenerateRequest:
    return worker_pb2.WorkerGenerateRequest(
        request_id=f"server-{next(_ids)}",
        model_version="smollm2@1",
        request=generation_pb2.GenerateRequest(
            model="smollm2@1",
            prompt="Tell me a long story about a mill.",
            sampling=generation_pb2.SamplingParams(max_tokens=1500, ignore_eos=True),
        ),
    )


async def until(condition: Callable[[], bool], timeout_s: float) -> None:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.01)


async def test_streams_with_usage_over_grpc(worker_address: str, vllm_engine: VllmEngine) -> None:
    async with grpc.aio.insecure_channel(worker_address) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        request = long_request()
        request.request.sampling.max_tokens = 8
        messages = [m async for m in stub.Generate(request)]
    assert messages[-1].finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert messages[-1].usage.completion_tokens == 8 == sum(len(m.token_ids) for m in messages)
    assert messages[-1].usage.prompt_tokens > 0


async def test_a_cancelled_call_frees_the_engine_sequence_within_a_second(
    worker_address: str, vllm_engine: VllmEngine
) -> None:
    async with grpc.aio.insecure_channel(worker_address) as channel:
        call = worker_pb2_grpc.WorkerStub(channel).Generate(long_request())
        for _ in range(3):
            await call.read()
        await until(lambda: vllm_engine.stats().running == 1, 2.0)
        call.cancel()
        await until(lambda: vllm_engine.stats().running == 0, 1.0)


async def test_a_disconnected_caller_frees_the_engine_sequence_within_a_second(
    worker_address: str, vllm_engine: VllmEngine
) -> None:
    channel = grpc.aio.insecure_channel(worker_address)
    call = worker_pb2_grpc.WorkerStub(channel).Generate(long_request())
    for _ in range(3):
        await call.read()
    await until(lambda: vllm_engine.stats().running == 1, 2.0)
    await channel.close(grace=None)
    await until(lambda: vllm_engine.stats().running == 0, 1.0)


async def test_abort_rpc_ends_the_stream_with_abort(worker_address: str, vllm_engine: VllmEngine) -> None:
    async with grpc.aio.insecure_channel(worker_address) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        request = long_request()
        call = stub.Generate(request)
        for _ in range(3):
            await call.read()
        found = await stub.Abort(worker_pb2.AbortRequest(request_id=request.request_id))
        assert found.found
        rest = []
        while (message := await call.read()) is not grpc.aio.EOF:
            rest.append(message)
    assert rest[-1].finish_reason == generation_pb2.FINISH_REASON_ABORT
    await until(lambda: vllm_engine.stats().running == 0, 1.0)
