"""The leasing side of scheduler replicas (headrace/runtime/scheduler_replicas.py)
over real gRPC: two scheduler replicas in this process, one synthetic
worker reporting to both. Place goes to the replicas in turn, a lease is
renewed and released where it was granted, and a replica that is gone is
skipped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from headrace.runtime.config import Settings
from headrace.runtime.scheduler_replicas import SchedulerReplicas
from headrace.runtime.server import GrpcServiceHost
from headrace.v1 import scheduler_pb2
from services.scheduler.__main__ import build_dispatcher, build_host
from services.scheduler.dispatcher import Dispatcher
from services.worker.__main__ import WorkerApp, build_worker, start_worker

MODEL = "gen@1"


def settings() -> Settings:
    return Settings(
        pools={"gen": {"workers": 1, "engine": {"kind": "synthetic", "max_concurrency": 4}}},  # type: ignore[arg-type]
        models={"gen": {"default_version": "1", "versions": {"1": {"pool": "gen"}}}},  # type: ignore[arg-type]
        default_model="gen",
        default_embedding_model="",
        scheduler={"report_interval_ms": 100, "metrics_port": None},  # type: ignore[arg-type]
        worker={"metrics_port_offset": None},  # type: ignore[arg-type]
    )


@dataclass
class Replica:
    dispatcher: Dispatcher
    host: GrpcServiceHost
    address: str
    stopped: bool = False

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.host.stop(0)
            await self.dispatcher.close()


@dataclass
class Pair:
    replicas: list[Replica]
    worker: WorkerApp
    client: SchedulerReplicas


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    config = settings()
    replicas = []
    for _ in range(2):
        dispatcher = build_dispatcher(config)
        await dispatcher.start()
        host = build_host(config, dispatcher, port=0)
        replicas.append(Replica(dispatcher, host, f"127.0.0.1:{await host.start()}"))
    worker = build_worker(config, pool="gen", index=0, port=0, scheduler_targets=[r.address for r in replicas])
    await start_worker(worker)
    client = SchedulerReplicas([r.address for r in replicas], config.limits, None)
    deadline = time.monotonic() + 10
    while not all(r.dispatcher.registry.has_candidate(MODEL) for r in replicas):
        assert time.monotonic() < deadline, "the worker did not report to both replicas"
        await asyncio.sleep(0.02)
    try:
        yield Pair(replicas, worker, client)
    finally:
        await client.close()
        await worker.host.stop(0)
        await worker.close()
        for replica in replicas:
            await replica.stop()


def request(n: int) -> scheduler_pb2.PlaceRequest:
    return scheduler_pb2.PlaceRequest(request_id=f"r{n}", model_version=MODEL, tenant="t", max_tokens=4)


async def test_places_alternate_and_each_lease_goes_back_to_its_replica(pair: Pair) -> None:
    placed = [await pair.client.place(request(n)) for n in range(4)]
    owners = [pair.client.owner_of(p.lease.lease_id) for p in placed]
    assert sorted(owners) == sorted([r.address for r in pair.replicas] * 2)
    for response, owner in zip(placed, owners, strict=True):
        replica = next(r for r in pair.replicas if r.address == owner)
        assert replica.dispatcher.leases.get(response.lease.lease_id) is not None
        renewed = await pair.client.renew(scheduler_pb2.RenewLeaseRequest(lease_id=response.lease.lease_id))
        assert renewed.lease.lease_id == response.lease.lease_id
        released = await pair.client.release(scheduler_pb2.ReleaseRequest(lease_id=response.lease.lease_id))
        assert released.released
        assert replica.dispatcher.leases.get(response.lease.lease_id) is None
    assert all(len(r.dispatcher.leases) == 0 for r in pair.replicas)


async def test_a_replica_that_is_gone_is_skipped(pair: Pair) -> None:
    gone, alive = pair.replicas
    await gone.stop()
    for n in range(4):
        response = await pair.client.place(request(n))
        assert pair.client.owner_of(response.lease.lease_id) == alive.address
        await pair.client.release(scheduler_pb2.ReleaseRequest(lease_id=response.lease.lease_id))
    # The balanced channel for calls any replica answers fails over too.
    listing = await pair.client.any_replica.ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=5)
    assert [w.info.worker_id for w in listing.workers] == ["gen-0"]


async def test_a_batch_consumers_row_leases_come_from_a_replica_that_is_up(pair: Pair) -> None:
    """The consumer beside a worker asks every replica too: with one gone,
    its rows' batch leases come from the other and go back there."""
    from services.worker.consumer.row_leases import RowAsk, RowLeases

    gone, alive = pair.replicas
    await gone.stop()
    leases = RowLeases(pair.client, worker_id="gen-0", max_inflight=2)
    for n in range(3):
        async with leases.lease(RowAsk(request_id=f"row-{n}", model_version=MODEL, tenant="t", max_tokens=4)) as held:
            assert pair.client.owner_of(held.lease.lease_id) == alive.address
            assert alive.dispatcher.leases.get(held.lease.lease_id) is not None
    assert len(alive.dispatcher.leases) == 0


async def test_releases_that_end_together_go_back_in_one_call_each_to_its_replica(pair: Pair) -> None:
    """Leases released at once: the first goes alone, the rest wait for it
    and go together (ReleaseMany), each to the replica that granted it;
    every slot is back and every answer says released."""
    placed = [await pair.client.place(request(n)) for n in range(8)]
    answers = await asyncio.gather(
        *(pair.client.release(scheduler_pb2.ReleaseRequest(lease_id=p.lease.lease_id)) for p in placed)
    )
    assert all(answer.released for answer in answers)
    assert all(len(r.dispatcher.leases) == 0 for r in pair.replicas)
    # 8 leases over 2 replicas: per replica one alone, then the other 3 together.
    assert [(c.single_calls, c.many_calls) for c in pair.client.releases] == [(1, 1), (1, 1)]
    # Released twice: the scheduler says so for each (unknown lease).
    again = await pair.client.releases[0].release(scheduler_pb2.ReleaseRequest(lease_id=placed[0].lease.lease_id))
    assert not again.released


async def test_release_many_is_bounded(pair: Pair) -> None:
    import grpc

    stub = pair.client.releases[0]._stub
    too_many = scheduler_pb2.ReleaseManyRequest(
        releases=[scheduler_pb2.ReleaseRequest(lease_id=f"l{n}") for n in range(1025)]
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ReleaseMany(too_many, timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1024" in (refused.value.details() or "")
