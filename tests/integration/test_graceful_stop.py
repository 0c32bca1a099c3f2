"""SIGTERM -> NOT_SERVING -> in-flight calls finish within the grace period."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from headrace.local.redis_server import RedisServer, free_port
from headrace.v1 import generation_pb2, worker_pb2
from tests.integration.test_mesh_grpc import mesh_settings
from tests.support.mesh import start_mesh


def long_request(request_id: str) -> worker_pb2.WorkerGenerateRequest:
    return worker_pb2.WorkerGenerateRequest(
        request_id=request_id,
        model_version="smollm2@1",
        request=generation_pb2.GenerateRequest(prompt="x", sampling=generation_pb2.SamplingParams(max_tokens=40)),
    )


async def test_stopping_a_server_lets_in_flight_streams_finish(redis_server: RedisServer) -> None:
    settings = mesh_settings(
        redis_server.url,
        pools={
            "smollm2": {"engine": {"kind": "synthetic", "ttft_ms": 1, "tokens_per_s": 40}},
            "embed": {"engine": {"kind": "synthetic"}},
        },
    )
    mesh = await start_mesh(settings)
    try:
        worker = mesh.workers[0]
        stub = mesh.worker_stub(0)
        health = health_pb2_grpc.HealthStub(mesh.channel(worker.address))
        call = stub.Generate(long_request("in-flight"))
        await call.read()  # the stream is running (1 s to go at 40 tokens/s)
        # serve()'s order on SIGTERM: NOT_SERVING first, then stop with grace.
        await worker.app.host.set_serving(False)
        status = await health.Check(health_pb2.HealthCheckRequest(service="headrace.v1.Worker"))
        assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        stopping = asyncio.create_task(worker.app.host.stop(grace_s=5.0))
        rest = []
        while (chunk := await call.read()) is not grpc.aio.EOF:
            rest.append(chunk)
        assert rest[-1].finish_reason == generation_pb2.FINISH_REASON_LENGTH
        assert rest[-1].usage.completion_tokens == 40
        await stopping
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Generate(long_request("late")).read()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        worker.stopped = True
        await worker.app.close()
    finally:
        await mesh.close()


def test_sigterm_stops_a_service_process_gracefully(redis_server: RedisServer) -> None:
    port = free_port()
    env = {
        **os.environ,
        "HEADRACE_REDIS_URL": redis_server.url,
        "HEADRACE_CACHE__PORT": str(port),
        "HEADRACE_CACHE__METRICS_PORT": "null",
        # Exact cache only: this test is about shutdown, not the embedding model.
        "HEADRACE_CACHE__SEMANTIC__ENABLED": "false",
    }
    process = subprocess.Popen([sys.executable, "-m", "services.cache"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 60
            while True:
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(service="headrace.v1.Cache"), timeout=1)
                    if status.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, "cache did not start"
                time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert process.stderr is not None
        log = process.stderr.read()
        assert "stopping: NOT_SERVING" in log and "stopped" in log
    finally:
        if process.poll() is None:
            process.kill()
