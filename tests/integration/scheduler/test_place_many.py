"""Scheduler.PlaceMany over real gRPC: a scheduler and one synthetic worker
(2 slots, nothing queued ahead for batch) in this process. Batch rows'
places go in one call, each waits in the queue as a Place would, each
lease comes back once as soon as it is granted, and a caller that leaves
takes its places out of the queue. Through the consumer's coalescer
(headrace/runtime/place_coalescer.py), rows that ask together share a call.
Scheduler.PlaceNowMany (a router's places on a slot free now) likewise,
and through the router's PlacesNow."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import grpc.aio
import pytest

from headrace.runtime.config import Settings
from headrace.runtime.errors import ResourceExhausted
from headrace.runtime.place_coalescer import PlaceCoalescer
from headrace.runtime.scheduler_replicas import SchedulerReplicas
from headrace.runtime.server import GrpcServiceHost
from headrace.v1 import generation_pb2, scheduler_pb2, scheduler_pb2_grpc
from services.router.places_now import PlacesNow
from services.scheduler.__main__ import build_dispatcher, build_host
from services.scheduler.dispatcher import Dispatcher
from services.worker.__main__ import WorkerApp, build_worker, start_worker

MODEL = "gen@1"
WORKER = "gen-0"


def settings() -> Settings:
    return Settings(
        pools={"gen": {"workers": 1, "engine": {"kind": "synthetic", "max_concurrency": 2}}},  # type: ignore[arg-type]
        models={"gen": {"default_version": "1", "versions": {"1": {"pool": "gen"}}}},  # type: ignore[arg-type]
        default_model="gen",
        default_embedding_model="",
        scheduler={  # type: ignore[arg-type]
            "report_interval_ms": 100,
            "metrics_port": None,
            "pools": {"gen": {"batch_queue_ahead": 0, "engine_queue_slots": 0}},
        },
        worker={"metrics_port_offset": None},  # type: ignore[arg-type]
    )


@dataclass
class Mesh:
    dispatcher: Dispatcher
    host: GrpcServiceHost
    worker: WorkerApp
    channel: grpc.aio.Channel
    stub: scheduler_pb2_grpc.SchedulerStub
    address: str

    def queued(self) -> int:
        return len(self.dispatcher.admission("gen").queue)


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    config = settings()
    dispatcher = build_dispatcher(config)
    await dispatcher.start()
    host = build_host(config, dispatcher, port=0)
    address = f"127.0.0.1:{await host.start()}"
    worker = build_worker(config, pool="gen", index=0, port=0, scheduler_targets=[address])
    await start_worker(worker)
    deadline = time.monotonic() + 10
    while not dispatcher.registry.has_candidate(MODEL):
        assert time.monotonic() < deadline, "the worker did not report"
        await asyncio.sleep(0.02)
    channel = grpc.aio.insecure_channel(address)
    try:
        yield Mesh(dispatcher, host, worker, channel, scheduler_pb2_grpc.SchedulerStub(channel), address)
    finally:
        await channel.close()
        await worker.host.stop(0)
        await worker.close()
        await host.stop(0)
        await dispatcher.close()


def row(n: int, *, worker_id: str = WORKER) -> scheduler_pb2.PlaceRequest:
    return scheduler_pb2.PlaceRequest(
        request_id=f"row-{n}",
        model_version=MODEL,
        tenant="t",
        priority=generation_pb2.PRIORITY_BATCH,
        max_tokens=4,
        worker_id=worker_id,
    )


async def wait_until(condition: object, what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not callable(condition) or not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_each_lease_comes_once_as_soon_as_it_is_granted(mesh: Mesh) -> None:
    call = mesh.stub.PlaceMany(scheduler_pb2.PlaceManyRequest(places=[row(n) for n in range(3)]), timeout=10)
    stream = call.__aiter__()
    # Two slots: two places leased at once, in one message; the third waits.
    first = await stream.__anext__()
    assert sorted(o.index for o in first.outcomes) == [0, 1]
    assert all(o.HasField("placed") and o.placed.lease.worker_id == WORKER for o in first.outcomes)
    await wait_until(lambda: mesh.queued() == 1, "the third place queued")
    # A slot comes back: the third is leased and the stream ends.
    await mesh.stub.Release(scheduler_pb2.ReleaseRequest(lease_id=first.outcomes[0].placed.lease.lease_id))
    second = await stream.__anext__()
    assert [o.index for o in second.outcomes] == [2]
    assert second.outcomes[0].HasField("placed")
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    assert await call.code() == grpc.StatusCode.OK
    leases = {o.placed.lease.lease_id for o in [*first.outcomes, *second.outcomes]}
    assert len(leases) == 3
    assert len(mesh.dispatcher.leases) == 2


async def test_a_refused_place_says_why_and_the_others_still_get_theirs(mesh: Mesh) -> None:
    call = mesh.stub.PlaceMany(
        scheduler_pb2.PlaceManyRequest(places=[row(0), row(1, worker_id="no-such-worker")]), timeout=10
    )
    outcomes = {o.index: o async for message in call for o in message.outcomes}
    assert outcomes[0].HasField("placed")
    refused = outcomes[1].refused
    assert refused.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "no-such-worker" in refused.message
    assert refused.retry_after_s > 0


async def test_a_caller_that_leaves_takes_its_places_out_of_the_queue(mesh: Mesh) -> None:
    # Every slot taken.
    held = [await mesh.stub.Place(row(100 + n), timeout=5) for n in range(2)]
    call = mesh.stub.PlaceMany(scheduler_pb2.PlaceManyRequest(places=[row(n) for n in range(5)]), timeout=10)
    await wait_until(lambda: mesh.queued() == 5, "five places queued")
    call.cancel()
    await wait_until(lambda: mesh.queued() == 0, "the queue emptied")
    for response in held:
        await mesh.stub.Release(scheduler_pb2.ReleaseRequest(lease_id=response.lease.lease_id))
    await asyncio.sleep(0.1)
    # Nothing was granted to the places that left.
    assert len(mesh.dispatcher.leases) == 0


@pytest.mark.parametrize(
    ("places", "message"),
    [
        ([], "at least one"),
        ([row(n) for n in range(257)], "at most 256"),
        ([row(0), scheduler_pb2.PlaceRequest(request_id="online", model_version=MODEL, tenant="t")], "batch rows only"),
        (
            [
                scheduler_pb2.PlaceRequest(
                    request_id="x", model_version="no-version", worker_id=WORKER, priority=generation_pb2.PRIORITY_BATCH
                )
            ],
            "model_version: required",
        ),
    ],
)
async def test_bad_calls_are_refused_with_a_reason(
    mesh: Mesh, places: list[scheduler_pb2.PlaceRequest], message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in mesh.stub.PlaceMany(scheduler_pb2.PlaceManyRequest(places=places), timeout=5):
            pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (refused.value.details() or "")
    assert mesh.queued() == 0
    assert len(mesh.dispatcher.leases) == 0


async def test_rows_that_ask_together_share_one_call(mesh: Mesh) -> None:
    replicas = SchedulerReplicas([mesh.address], settings().limits, None)
    places = PlaceCoalescer(replicas)
    try:
        # Two slots, five rows: two leased now, the rest as slots come back.
        asks = [asyncio.ensure_future(places.place(row(n))) for n in range(5)]
        await wait_until(lambda: sum(a.done() for a in asks) == 2 and mesh.queued() == 3, "two leased, three queued")
        assert places.many_calls == 1
        assert places.places_sent == 5
        for leased_so_far in (3, 4, 5):
            done = next(
                a for a in asks if a.done() and mesh.dispatcher.leases.get(a.result().lease.lease_id) is not None
            )
            await replicas.release(scheduler_pb2.ReleaseRequest(lease_id=done.result().lease.lease_id))
            await wait_until(lambda n=leased_so_far: sum(a.done() for a in asks) == n, f"{leased_so_far} leased")
        leased = await asyncio.wait_for(asyncio.gather(*asks), timeout=5)
        assert len({p.lease.lease_id for p in leased}) == 5
        assert places.many_calls == 1
        # A row that stops asking: its lease, when it comes, goes straight back.
        waiting = asyncio.ensure_future(places.place(row(9)))
        await wait_until(lambda: mesh.queued() == 1, "the sixth row queued")
        waiting.cancel()
        for placed in leased:
            if mesh.dispatcher.leases.get(placed.lease.lease_id) is not None:
                await replicas.release(scheduler_pb2.ReleaseRequest(lease_id=placed.lease.lease_id))
        await wait_until(lambda: mesh.queued() == 0 and len(mesh.dispatcher.leases) == 0, "the unused lease released")
    finally:
        await places.close()
        await replicas.close()


# --- PlaceNowMany: a router's places on a slot free now, coalesced ---------


def online(n: int) -> scheduler_pb2.PlaceRequest:
    return scheduler_pb2.PlaceRequest(
        request_id=f"online-{n}", model_version=MODEL, tenant="t", max_tokens=4, only_if_free=True
    )


async def test_places_now_are_decided_at_once_in_order(mesh: Mesh) -> None:
    answer = await mesh.stub.PlaceNowMany(
        scheduler_pb2.PlaceNowManyRequest(places=[online(n) for n in range(3)]), timeout=5
    )
    assert [o.index for o in answer.outcomes] == [0, 1, 2]
    # Two slots: the first two leased, the third told at once there is none.
    assert all(o.HasField("placed") and o.placed.lease.worker_id == WORKER for o in answer.outcomes[:2])
    refused = answer.outcomes[2].refused
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "only_if_free" in refused.message
    assert refused.retry_after_s > 0
    assert mesh.queued() == 0
    assert len(mesh.dispatcher.leases) == 2
    assert all(mesh.dispatcher.leases.get(o.placed.lease.lease_id) is not None for o in answer.outcomes[:2])


@pytest.mark.parametrize(
    ("places", "message"),
    [
        ([], "at least one"),
        ([online(n) for n in range(257)], "at most 256"),
        ([online(0), scheduler_pb2.PlaceRequest(request_id="queues", model_version=MODEL, tenant="t")], "only_if_free"),
    ],
)
async def test_bad_places_now_are_refused_with_a_reason(
    mesh: Mesh, places: list[scheduler_pb2.PlaceRequest], message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await mesh.stub.PlaceNowMany(scheduler_pb2.PlaceNowManyRequest(places=places), timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (refused.value.details() or "")
    assert len(mesh.dispatcher.leases) == 0


async def test_the_routers_places_now_share_a_call_and_skip_a_dead_replica(mesh: Mesh) -> None:
    # A replica that is not there, listed first: its calls fail UNAVAILABLE.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    replicas = SchedulerReplicas([dead, mesh.address], settings().limits, None)
    given_back: list[scheduler_pb2.Lease] = []
    places = PlacesNow(replicas, give_back=given_back.append)
    try:
        for round_ in range(4):
            outcomes = await asyncio.gather(
                *(places.place(online(10 * round_ + n), options=dict) for n in range(5)), return_exceptions=True
            )
            leased = [o for o in outcomes if isinstance(o, scheduler_pb2.PlaceResponse)]
            # Two slots: two leases, three told there is none now; never the dead replica's error.
            assert len(leased) == 2, outcomes
            assert all(isinstance(o, ResourceExhausted) for o in outcomes if o not in leased), outcomes
            for placed in leased:
                # Its release goes to the replica that granted it.
                assert replicas.owner_of(placed.lease.lease_id) == mesh.address
                await replicas.release(scheduler_pb2.ReleaseRequest(lease_id=placed.lease.lease_id))
            await wait_until(lambda: len(mesh.dispatcher.leases) == 0, "the leases back")
        # The first of each round went alone, the four behind it in one call.
        assert places.many_calls == 4
        assert places.single_calls == 4
        assert replicas.failovers >= 1
    finally:
        assert given_back == []
        await replicas.close()
