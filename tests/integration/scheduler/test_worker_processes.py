"""The scheduler over real gRPC with several real worker processes (the
synthetic engine: this is about the scheduler, not a model). The workers
report their load on their own streams; the tests drive Place, Release and
GetPoolStatus as a router would, and crash workers for real."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest
import yaml

from headrace.local.redis_server import free_port
from headrace.runtime.config import Settings
from headrace.runtime.server import GrpcServiceHost
from headrace.v1 import generation_pb2, scheduler_pb2, scheduler_pb2_grpc
from services.scheduler.__main__ import build_dispatcher, build_host
from services.scheduler.dispatcher import Dispatcher
from tests.support.worker_processes import WorkerProcess, spawn_worker

POOL = "gen"
MODEL = "gen@1"
SLOTS_PER_WORKER = 2
WORKERS = 3
LEASE_TTL_S = 3.0


def config(scheduler_port: int) -> dict[str, object]:
    return {
        "pools": {
            POOL: {
                "workers": WORKERS,
                "engine": {"kind": "synthetic", "ttft_ms": 1, "max_concurrency": SLOTS_PER_WORKER},
            }
        },
        "models": {"gen": {"default_version": "1", "versions": {"1": {"pool": POOL}}}},
        "default_model": "gen",
        "scheduler": {
            "port": scheduler_port,
            "metrics_port": None,
            "report_interval_ms": 100,
            "worker_stale_after_s": 2.0,
            "lease_ttl_s": LEASE_TTL_S,
            "pools": {POOL: {"policy": "least_load", "queue_limit": 3}},
        },
        "worker": {"metrics_port_offset": None},
    }


@dataclass
class Cluster:
    dispatcher: Dispatcher
    host: GrpcServiceHost
    stub: scheduler_pb2_grpc.SchedulerStub
    workers: list[WorkerProcess]
    config_path: Path
    log_dir: Path

    async def wait_accepting(self, count: int, timeout_s: float = 60.0) -> list[scheduler_pb2.WorkerStatus]:
        deadline = time.monotonic() + timeout_s
        while True:
            listing = await self.stub.ListWorkers(scheduler_pb2.ListWorkersRequest(pool=POOL))
            accepting = [w for w in listing.workers if w.accepting]
            if len(accepting) == count:
                return accepting
            if time.monotonic() > deadline:
                logs = "\n".join(w.log()[-2000:] for w in self.workers)
                raise TimeoutError(f"{count} workers not accepting in {timeout_s}s: {listing}\n{logs}")
            await asyncio.sleep(0.05)

    async def pool_status(self) -> scheduler_pb2.PoolStatus:
        response: scheduler_pb2.GetPoolStatusResponse = await self.stub.GetPoolStatus(
            scheduler_pb2.GetPoolStatusRequest(pool=POOL)
        )
        return response.pools[0]


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    tmp = tmp_path_factory.mktemp("scheduler-workers")
    port = free_port()
    config_path = tmp / "headrace.yaml"
    config_path.write_text(yaml.safe_dump(config(port)))
    settings = Settings(**config(port))  # type: ignore[arg-type]
    dispatcher = build_dispatcher(settings)
    await dispatcher.start()
    host = build_host(settings, dispatcher, port=port)
    await host.start()
    workers = [spawn_worker(config_path, pool=POOL, index=i, log_dir=tmp / "logs") for i in range(WORKERS)]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    running = Cluster(dispatcher, host, scheduler_pb2_grpc.SchedulerStub(channel), workers, config_path, tmp / "logs")
    try:
        await running.wait_accepting(WORKERS)
        yield running
    finally:
        for worker in running.workers:
            worker.stop()
        await channel.close()
        await host.stop(0.5)
        await dispatcher.close()


_ids = iter(range(10**9))


def place_request(
    priority: generation_pb2.Priority.ValueType = generation_pb2.PRIORITY_STANDARD, tenant: str = "t"
) -> scheduler_pb2.PlaceRequest:
    return scheduler_pb2.PlaceRequest(
        request_id=f"it-{next(_ids)}", model_version=MODEL, tenant=tenant, priority=priority, max_tokens=16
    )


async def fill(cluster: Cluster) -> list[scheduler_pb2.PlaceResponse]:
    """Take every slot of the pool."""
    placed = [await cluster.stub.Place(place_request(), timeout=5) for _ in range(SLOTS_PER_WORKER * WORKERS)]
    assert (await cluster.pool_status()).leased == SLOTS_PER_WORKER * WORKERS
    return placed


async def release_all(cluster: Cluster, placed: list[scheduler_pb2.PlaceResponse]) -> None:
    for response in placed:
        await cluster.stub.Release(scheduler_pb2.ReleaseRequest(lease_id=response.lease.lease_id))


async def wait_queued(cluster: Cluster, count: int) -> None:
    for _ in range(1000):
        if sum((await cluster.pool_status()).queued.values()) == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} queued: {await cluster.pool_status()}")


async def test_slots_follow_the_workers_reports_and_a_full_pool_queues(cluster: Cluster) -> None:
    status = await cluster.pool_status()
    assert status.workers == WORKERS and status.capacity == SLOTS_PER_WORKER * WORKERS
    placed = await fill(cluster)
    # least_load spread them evenly over the three processes.
    per_worker = {w.info.worker_id: w.leases for w in (await cluster.wait_accepting(WORKERS))}
    assert set(per_worker.values()) == {SLOTS_PER_WORKER}
    waiting = asyncio.ensure_future(cluster.stub.Place(place_request(), timeout=10))
    await wait_queued(cluster, 1)
    assert not waiting.done()
    freed = placed.pop(0)
    await cluster.stub.Release(scheduler_pb2.ReleaseRequest(lease_id=freed.lease.lease_id))
    got = await waiting
    assert got.lease.worker_id == freed.lease.worker_id and got.queue_ms > 0
    await release_all(cluster, [*placed, got])


async def test_a_full_queue_is_resource_exhausted_at_once_and_cancelled_calls_free_their_places(
    cluster: Cluster,
) -> None:
    placed = await fill(cluster)
    waiting = [asyncio.ensure_future(cluster.stub.Place(place_request(), timeout=10)) for _ in range(3)]
    await wait_queued(cluster, 3)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await cluster.stub.Place(place_request(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "full" in (refused.value.details() or "")
    assert dict(refused.value.trailing_metadata() or ())["retry-after"].isdigit()
    assert time.monotonic() - started < 5  # at once, not after a wait
    for call in waiting:
        call.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    await wait_queued(cluster, 0)
    await release_all(cluster, placed)
    assert (await cluster.pool_status()).leased == 0


async def test_an_expiring_deadline_is_deadline_exceeded_and_frees_its_place(cluster: Cluster) -> None:
    placed = await fill(cluster)
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await cluster.stub.Place(place_request(), timeout=0.3)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_queued(cluster, 0)
    await release_all(cluster, placed)


async def test_freed_slots_go_to_interactive_then_standard_then_batch(cluster: Cluster) -> None:
    placed = await fill(cluster)
    order = [generation_pb2.PRIORITY_BATCH, generation_pb2.PRIORITY_STANDARD, generation_pb2.PRIORITY_INTERACTIVE]
    calls = {}
    for position, priority in enumerate(order):
        calls[priority] = asyncio.ensure_future(cluster.stub.Place(place_request(priority), timeout=10))
        await wait_queued(cluster, position + 1)
    served = []
    for held in placed[:3]:
        await cluster.stub.Release(scheduler_pb2.ReleaseRequest(lease_id=held.lease.lease_id))
        done, _ = await asyncio.wait(calls.values(), return_when=asyncio.FIRST_COMPLETED, timeout=5)
        (finished,) = done
        priority = next(p for p, call in calls.items() if call is finished)
        served.append(priority)
        placed.append(calls.pop(priority).result())
    assert served == list(reversed(order))
    await release_all(cluster, placed[3:])


async def test_an_unreleased_lease_expires_and_its_slot_is_placed_again(cluster: Cluster) -> None:
    placed = await fill(cluster)
    # The router holding this lease "crashed": it never releases it.
    abandoned, kept = placed[0], placed[1:]
    waiting = asyncio.ensure_future(cluster.stub.Place(place_request(), timeout=LEASE_TTL_S + 5))
    got = await waiting
    assert got.lease.worker_id == abandoned.lease.worker_id
    assert got.queue_ms >= (LEASE_TTL_S - 1) * 1000
    released = await cluster.stub.Release(scheduler_pb2.ReleaseRequest(lease_id=abandoned.lease.lease_id))
    assert not released.released  # already expired
    await release_all(cluster, [*kept, got])


async def test_a_crashed_worker_gets_no_more_work_and_its_leases_are_dropped(cluster: Cluster) -> None:
    extra = spawn_worker(cluster.config_path, pool=POOL, index=WORKERS, log_dir=cluster.log_dir)
    cluster.workers.append(extra)
    await cluster.wait_accepting(WORKERS + 1)
    placed = await fill(cluster)
    placed.append(await cluster.stub.Place(place_request(), timeout=5))
    placed.append(await cluster.stub.Place(place_request(), timeout=5))
    on_extra = [p for p in placed if p.lease.worker_id == extra.worker_id]
    assert len(on_extra) == SLOTS_PER_WORKER
    extra.kill()
    accepting = await cluster.wait_accepting(WORKERS)
    assert extra.worker_id not in {w.info.worker_id for w in accepting}
    # Its leases went with it; the others are untouched.
    assert (await cluster.pool_status()).leased == SLOTS_PER_WORKER * WORKERS
    for lease in on_extra:
        released = await cluster.stub.Release(scheduler_pb2.ReleaseRequest(lease_id=lease.lease.lease_id))
        assert not released.released
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await cluster.stub.Place(place_request(), timeout=0.5)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await release_all(cluster, [p for p in placed if p.lease.worker_id != extra.worker_id])
