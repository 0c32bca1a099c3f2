"""Redis down (stopped: connections refused) or frozen (SIGSTOP: connected,
silent): the batch and file endpoints answer 503 / UNAVAILABLE with a
Retry-After at once, over the router's gRPC and HTTP doors alike, instead
of holding the caller until its own timeout. When Redis is back, so are they."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from headrace.local.redis_server import RedisServer
from headrace.v1 import batch_pb2
from tests.integration.batch.conftest import batch_settings
from tests.support.batch import chat_rows
from tests.support.mesh import InProcessMesh, start_mesh

# Far above the bound the store keeps (store_timeout_s, 0.5 s), far below the
# 22-24 s callers used to wait: a call that does not answer in time fails
# the test as DEADLINE_EXCEEDED or a read timeout rather than UNAVAILABLE/503.
CALLER_TIMEOUT_S = 5.0


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    yield server
    if server.pid is not None:
        os.kill(server.pid, signal.SIGCONT)
    server.stop()


@pytest.fixture
async def mesh(private_redis: RedisServer) -> AsyncIterator[InProcessMesh]:
    started = await start_mesh(batch_settings(private_redis.url), http=True)
    yield started
    await started.close()


async def outage_answers(mesh: InProcessMesh, batch_id: str, file_id: str) -> dict[str, float]:
    """Every door's answer during the outage, checked; returns seconds each took."""
    stub = mesh.router_stub()
    took: dict[str, float] = {}

    async def grpc_call(name: str, call: Callable[[], Awaitable[object]]) -> None:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call()
        took[f"grpc {name}"] = time.monotonic() - started
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, (name, caught.value)
        assert "batch store" in (caught.value.details() or "")
        trailers = dict(caught.value.trailing_metadata() or ())
        assert float(trailers["retry-after"]) > 0, (name, trailers)

    await grpc_call(
        "GetBatch",
        lambda: stub.GetBatch(batch_pb2.GetBatchRequest(batch_id=batch_id), timeout=CALLER_TIMEOUT_S),
    )
    await grpc_call(
        "SubmitBatch",
        lambda: stub.SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(2)), timeout=CALLER_TIMEOUT_S),
    )
    async with httpx.AsyncClient(base_url=mesh.http_url, timeout=CALLER_TIMEOUT_S) as http:
        calls: dict[str, Callable[[], Awaitable[httpx.Response]]] = {
            "GET /v1/batches/{id}": lambda: http.get(f"/v1/batches/{batch_id}"),
            "GET /v1/batches": lambda: http.get("/v1/batches"),
            "POST /v1/files": lambda: http.post(
                "/v1/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", chat_rows(2))}
            ),
            "GET /v1/files/{id}/content": lambda: http.get(f"/v1/files/{file_id}/content"),
        }
        for name, call in calls.items():
            started = time.monotonic()
            response = await call()
            took[f"http {name}"] = time.monotonic() - started
            assert response.status_code == 503, (name, response.text)
            assert float(response.headers["retry-after"]) > 0, name
            assert response.json()["error"]["message"], name
    return took


async def answers_again(mesh: InProcessMesh, batch_id: str) -> None:
    job = await mesh.router_stub().GetBatch(batch_pb2.GetBatchRequest(batch_id=batch_id), timeout=CALLER_TIMEOUT_S)
    assert job.id == batch_id


async def a_job_and_a_file(mesh: InProcessMesh) -> tuple[str, str]:
    job = await mesh.router_stub().SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(2)))
    return job.id, job.input_file_id


async def test_redis_stopped_answers_503_at_once_and_recovers(mesh: InProcessMesh, private_redis: RedisServer) -> None:
    batch_id, file_id = await a_job_and_a_file(mesh)
    private_redis.kill()
    took = await outage_answers(mesh, batch_id, file_id)
    print("\nRedis stopped:", {name: f"{s * 1000:.0f} ms" for name, s in took.items()})
    private_redis.start()
    await answers_again(mesh, batch_id)


async def test_redis_frozen_answers_503_at_once_and_recovers(mesh: InProcessMesh, private_redis: RedisServer) -> None:
    batch_id, file_id = await a_job_and_a_file(mesh)
    assert private_redis.pid is not None
    os.kill(private_redis.pid, signal.SIGSTOP)
    try:
        took = await outage_answers(mesh, batch_id, file_id)
    finally:
        os.kill(private_redis.pid, signal.SIGCONT)
    print("\nRedis frozen:", {name: f"{s * 1000:.0f} ms" for name, s in took.items()})
    await answers_again(mesh, batch_id)
