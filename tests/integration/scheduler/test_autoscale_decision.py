"""The autoscaler's decision as an actuator reads it: over real gRPC
(GetPoolStatus) and on the scheduler's /metrics, with a real worker process
reporting its load and requests queueing for its slots."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
import yaml

from headrace.local.mesh import LocalMesh
from headrace.local.redis_server import free_port
from headrace.local.supervisor import Supervisor
from headrace.runtime.config import Settings
from headrace.runtime.telemetry import start_metrics_server
from headrace.v1 import generation_pb2, scheduler_pb2, scheduler_pb2_grpc
from services.scheduler.__main__ import build_dispatcher, build_host
from tests.support.worker_processes import spawn_worker

POOL = "gen"
MODEL = "gen@1"
# Where the fixture's scheduler listens.
SCHEDULER_ADDRESS: list[str] = []


def config(port: int) -> dict[str, object]:
    return {
        "pools": {
            POOL: {"workers": 1, "engine": {"kind": "synthetic", "ttft_ms": 1, "max_concurrency": 2}},
        },
        "models": {"gen": {"default_version": "1", "versions": {"1": {"pool": POOL}}}},
        "default_model": "gen",
        "scheduler": {
            "port": port,
            "metrics_port": None,
            "report_interval_ms": 100,
            "pools": {
                POOL: {
                    "queue_limit": 64,
                    "autoscale": {
                        "enabled": True,
                        "min_workers": 1,
                        "max_workers": 3,
                        "scale_up_cooldown_s": 0,
                        "queue_wait_slo_s": 0.05,
                    },
                }
            },
        },
        "worker": {"metrics_port_offset": None},
    }


@pytest.fixture
async def scheduler(tmp_path: Path) -> AsyncIterator[tuple[scheduler_pb2_grpc.SchedulerStub, int]]:
    port = free_port()
    config_path = tmp_path / "headrace.yaml"
    config_path.write_text(yaml.safe_dump(config(port)))
    settings = Settings(**config(port))  # type: ignore[arg-type]
    dispatcher = build_dispatcher(settings)
    await dispatcher.start()
    host = build_host(settings, dispatcher, port=port)
    await host.start()
    metrics_port = start_metrics_server("127.0.0.1", 0)
    assert metrics_port is not None
    worker = spawn_worker(config_path, pool=POOL, index=0, log_dir=tmp_path / "logs")
    SCHEDULER_ADDRESS[:] = [f"127.0.0.1:{port}"]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = scheduler_pb2_grpc.SchedulerStub(channel)
    try:
        deadline = time.monotonic() + 60
        while not [w for w in (await stub.ListWorkers(scheduler_pb2.ListWorkersRequest())).workers if w.accepting]:
            assert time.monotonic() < deadline, worker.log()
            await asyncio.sleep(0.05)
        yield stub, metrics_port
    finally:
        await channel.close()
        worker.stop()
        await host.stop(grace_s=0)
        await dispatcher.close()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def place_request(i: int) -> scheduler_pb2.PlaceRequest:
    return scheduler_pb2.PlaceRequest(
        model_version=MODEL,
        request_id=f"r{i}",
        tenant="t",
        priority=generation_pb2.PRIORITY_INTERACTIVE,
        max_tokens=16,
    )


async def test_queued_work_raises_the_desired_count_on_grpc_and_metrics(
    scheduler: tuple[scheduler_pb2_grpc.SchedulerStub, int],
) -> None:
    stub, metrics_port = scheduler
    status = (await stub.GetPoolStatus(scheduler_pb2.GetPoolStatusRequest(pool=POOL))).pools[0]
    assert status.desired_workers == 1

    # Two leases fill the worker's two slots; ten more wait in the queue.
    held = [await stub.Place(place_request(i), timeout=10) for i in range(2)]
    waiting = [asyncio.ensure_future(stub.Place(place_request(10 + i), timeout=30)) for i in range(10)]
    try:
        deadline = time.monotonic() + 20
        while True:
            status = (await stub.GetPoolStatus(scheduler_pb2.GetPoolStatusRequest(pool=POOL))).pools[0]
            if status.desired_workers > 1:
                break
            assert time.monotonic() < deadline, f"never scaled up: {status}"
            await asyncio.sleep(0.2)
        assert status.desired_workers <= 3
        assert status.desired_reason.startswith("demand") or "SLO" in status.desired_reason
        scraped = await asyncio.to_thread(scrape, metrics_port)
        assert f'headrace_scheduler_desired_workers{{pool="{POOL}"}} {float(status.desired_workers)}' in scraped
    finally:
        for placement in held:
            await stub.Release(scheduler_pb2.ReleaseRequest(lease_id=placement.lease.lease_id, ttft_ms=120.0))
        for future in waiting:
            with contextlib.suppress(grpc.aio.AioRpcError):
                placement = await future
                await stub.Release(scheduler_pb2.ReleaseRequest(lease_id=placement.lease.lease_id, ttft_ms=80.0))


class RecordingActuator:
    """What the supervisor asked of the pool's size."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    def workers(self, pool: str) -> int:
        return 0

    def scale_to(self, pool: str, count: int) -> None:
        self.asked.append((pool, count))


async def test_the_supervisor_follows_the_first_replica_that_answers(
    scheduler: tuple[scheduler_pb2_grpc.SchedulerStub, int], tmp_path: Path
) -> None:
    stub, _ = scheduler
    status = (await stub.GetPoolStatus(scheduler_pb2.GetPoolStatusRequest(pool=POOL))).pools[0]
    assert status.desired_workers == 1
    settings = Settings(**config(0), state_dir=str(tmp_path))  # type: ignore[arg-type]
    supervisor = Supervisor(LocalMesh(settings), [], {})
    actuator = RecordingActuator()
    # Replica 0 is dead (nothing listens there); replica 1 answers.
    live = SCHEDULER_ADDRESS[0]
    supervisor.follow_decisions(actuator, [POOL], [f"127.0.0.1:{free_port()}", live])
    await asyncio.to_thread(supervisor.follow_once)
    assert actuator.asked == [(POOL, 1)]
