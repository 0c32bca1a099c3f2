"""Batch rows' places coalesced into PlaceMany calls (place_coalescer.py),
against fake scheduler replicas whose answers the test scripts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from headrace.runtime.place_coalescer import PlaceCoalescer, PlaceRefused
from headrace.v1 import generation_pb2, scheduler_pb2

Script = Callable[[int, scheduler_pb2.PlaceManyRequest], AsyncIterator[scheduler_pb2.PlaceManyResponse]]


def rpc_error(code: grpc.StatusCode, details: str = "no", retry_after: str | None = None) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata(("retry-after", retry_after)) if retry_after else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=details)


def placed(index: int, lease_id: str) -> scheduler_pb2.PlaceOutcome:
    return scheduler_pb2.PlaceOutcome(
        index=index, placed=scheduler_pb2.PlaceResponse(lease=scheduler_pb2.Lease(lease_id=lease_id))
    )


class FakeStream:
    def __init__(self, messages: AsyncIterator[scheduler_pb2.PlaceManyResponse]) -> None:
        self._messages = messages
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[scheduler_pb2.PlaceManyResponse]:
        return self._messages

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeReplicas:
    """What the coalescer uses of SchedulerReplicas; each PlaceMany answers
    as `script` says, a plain Place with a lease named after the row."""

    def __init__(self, script: Script, *, replicas: int = 1) -> None:
        self.targets = [f"scheduler-{i}" for i in range(replicas)]
        self.script = script
        self.many: list[tuple[int, list[str]]] = []
        self.single: list[tuple[int, str]] = []
        self.owners: dict[str, int] = {}
        self.released: list[scheduler_pb2.ReleaseRequest] = []

    def order(self) -> list[int]:
        return list(range(len(self.targets)))

    def place_many_at(self, index: int, request: scheduler_pb2.PlaceManyRequest, **options: Any) -> FakeStream:
        self.many.append((index, [p.request_id for p in request.places]))
        return FakeStream(self.script(index, request))

    async def place(self, request: scheduler_pb2.PlaceRequest, *, options: Callable[[], dict[str, Any]]) -> Any:
        self.single.append((0, request.request_id))
        return scheduler_pb2.PlaceResponse(lease=scheduler_pb2.Lease(lease_id=f"lease-{request.request_id}"))

    def remember(self, lease_id: str, index: int) -> None:
        self.owners[lease_id] = index

    async def release(self, request: scheduler_pb2.ReleaseRequest, **options: Any) -> Any:
        self.released.append(request)
        return scheduler_pb2.ReleaseResponse(released=True)


def row(n: int) -> scheduler_pb2.PlaceRequest:
    return scheduler_pb2.PlaceRequest(
        request_id=f"row-{n}", model_version="m@1", priority=generation_pb2.PRIORITY_BATCH, worker_id="w"
    )


def coalescer(replicas: FakeReplicas) -> PlaceCoalescer:
    return PlaceCoalescer(replicas, gather_s=0.001, rest_s=60.0)  # type: ignore[arg-type]


async def test_rows_that_ask_together_share_one_call_and_each_gets_its_own_outcome() -> None:
    async def script(index: int, request: scheduler_pb2.PlaceManyRequest) -> AsyncIterator[Any]:
        yield scheduler_pb2.PlaceManyResponse(outcomes=[placed(2, "L2"), placed(0, "L0")])
        yield scheduler_pb2.PlaceManyResponse(
            outcomes=[
                scheduler_pb2.PlaceOutcome(
                    index=1,
                    refused=scheduler_pb2.PlaceRefusal(
                        code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="queue full", retry_after_s=2.5
                    ),
                )
            ]
        )

    replicas = FakeReplicas(script)
    places = coalescer(replicas)
    results = await asyncio.gather(*(places.place(row(n)) for n in range(3)), return_exceptions=True)
    assert replicas.many == [(0, ["row-0", "row-1", "row-2"])]
    assert isinstance(results[0], scheduler_pb2.PlaceResponse) and results[0].lease.lease_id == "L0"
    assert isinstance(results[2], scheduler_pb2.PlaceResponse) and results[2].lease.lease_id == "L2"
    refused = results[1]
    assert isinstance(refused, PlaceRefused)
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.message == "queue full" and refused.retry_after_s == 2.5
    # Renewals and releases go to the replica that granted the lease.
    assert replicas.owners == {"L0": 0, "L2": 0}


async def test_places_a_failed_replica_did_not_decide_go_to_another() -> None:
    async def script(index: int, request: scheduler_pb2.PlaceManyRequest) -> AsyncIterator[Any]:
        if index == 0:
            yield scheduler_pb2.PlaceManyResponse(outcomes=[placed(0, "A0")])
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, "replica stopping")
        yield scheduler_pb2.PlaceManyResponse(
            outcomes=[placed(i, f"B-{p.request_id}") for i, p in enumerate(request.places)]
        )

    replicas = FakeReplicas(script, replicas=2)
    places = coalescer(replicas)
    results = await asyncio.gather(*(places.place(row(n)) for n in range(3)))
    assert [r.lease.lease_id for r in results] == ["A0", "B-row-1", "B-row-2"]
    assert replicas.many == [(0, ["row-0", "row-1", "row-2"]), (1, ["row-1", "row-2"])]
    # The failed replica rests: the next rows go straight to the other.
    assert (await places.place(row(3))).lease.lease_id == "B-row-3"


async def test_with_no_replica_left_the_places_are_refused_unavailable() -> None:
    async def script(index: int, request: scheduler_pb2.PlaceManyRequest) -> AsyncIterator[Any]:
        raise rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused")
        yield  # an async generator

    replicas = FakeReplicas(script)
    places = coalescer(replicas)
    with pytest.raises(PlaceRefused) as refused:
        await places.place(row(0))
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    # Resting, the one replica is not called again: refused at once.
    with pytest.raises(PlaceRefused):
        await places.place(row(1))
    assert len(replicas.many) == 1


async def test_a_call_refused_as_a_whole_refuses_each_place_with_its_retry_after() -> None:
    async def script(index: int, request: scheduler_pb2.PlaceManyRequest) -> AsyncIterator[Any]:
        raise rpc_error(grpc.StatusCode.PERMISSION_DENIED, "not a consumer", retry_after="3")
        yield

    places = coalescer(FakeReplicas(script))
    results = await asyncio.gather(*(places.place(row(n)) for n in range(2)), return_exceptions=True)
    assert all(isinstance(r, PlaceRefused) and r.code == grpc.StatusCode.PERMISSION_DENIED for r in results)
    assert all(isinstance(r, PlaceRefused) and r.retry_after_s == 3.0 for r in results)


async def test_an_older_scheduler_without_place_many_gets_one_place_per_row() -> None:
    async def script(index: int, request: scheduler_pb2.PlaceManyRequest) -> AsyncIterator[Any]:
        raise rpc_error(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        yield

    replicas = FakeReplicas(script)
    places = coalescer(replicas)
    results = await asyncio.gather(*(places.place(row(n)) for n in range(2)))
    assert [r.lease.lease_id for r in results] == ["lease-row-0", "lease-row-1"]
    assert (await places.place(row(2))).lease.lease_id == "lease-row-2"
    # PlaceMany asked once only.
    assert len(replicas.many) == 1
    assert [name for _, name in replicas.single] == ["row-0", "row-1", "row-2"]


async def test_a_lease_that_comes_after_its_row_stopped_asking_goes_straight_back() -> None:
    granted = asyncio.Event()

    async def script(index: int, request: scheduler_pb2.PlaceManyRequest) -> AsyncIterator[Any]:
        await granted.wait()
        yield scheduler_pb2.PlaceManyResponse(outcomes=[placed(0, "late")])

    replicas = FakeReplicas(script)
    places = coalescer(replicas)
    asking = asyncio.ensure_future(places.place(row(0)))
    while not replicas.many:
        await asyncio.sleep(0.001)
    asking.cancel()
    granted.set()
    for _ in range(20):
        await asyncio.sleep(0.001)
    assert [r.lease_id for r in replicas.released] == ["late"]
    assert replicas.released[0].outcome == scheduler_pb2.LEASE_OUTCOME_UNUSED
    await places.close()


async def test_a_row_that_stops_asking_before_the_call_is_not_sent() -> None:
    async def script(index: int, request: scheduler_pb2.PlaceManyRequest) -> AsyncIterator[Any]:
        yield scheduler_pb2.PlaceManyResponse(outcomes=[placed(i, f"L{i}") for i in range(len(request.places))])

    replicas = FakeReplicas(script)
    places = PlaceCoalescer(replicas, gather_s=0.05)  # type: ignore[arg-type]
    leaving = asyncio.ensure_future(places.place(row(0)))
    staying = asyncio.ensure_future(places.place(row(1)))
    await asyncio.sleep(0)
    leaving.cancel()
    assert (await staying).lease.lease_id == "L0"
    assert replicas.many == [(0, ["row-1"])]


@pytest.mark.parametrize(("gather_s", "calls"), [(0.2, 1), (0.001, 3)])
async def test_rows_that_ask_within_the_window_share_a_call(gather_s: float, calls: int) -> None:
    async def script(index: int, request: scheduler_pb2.PlaceManyRequest) -> AsyncIterator[Any]:
        yield scheduler_pb2.PlaceManyResponse(outcomes=[placed(i, f"L{i}") for i in range(len(request.places))])

    replicas = FakeReplicas(script)
    places = PlaceCoalescer(replicas, gather_s=gather_s)  # type: ignore[arg-type]
    asks = []
    for n in range(3):
        asks.append(asyncio.ensure_future(places.place(row(n))))
        await asyncio.sleep(0.02)
    await asyncio.gather(*asks)
    assert len(replicas.many) == calls
    assert [name for _, names in replicas.many for name in names] == ["row-0", "row-1", "row-2"]


async def test_a_call_that_breaks_unexpectedly_leaves_no_row_waiting() -> None:
    async def script(index: int, request: scheduler_pb2.PlaceManyRequest) -> AsyncIterator[Any]:
        yield scheduler_pb2.PlaceManyResponse(outcomes=[placed(0, "L0")])
        raise ValueError("a bug in the stream")

    places = coalescer(FakeReplicas(script))
    results = await asyncio.wait_for(
        asyncio.gather(*(places.place(row(n)) for n in range(2)), return_exceptions=True), timeout=1.0
    )
    assert isinstance(results[0], scheduler_pb2.PlaceResponse)
    assert isinstance(results[1], PlaceRefused) and results[1].code == grpc.StatusCode.INTERNAL


async def test_a_stream_that_ends_with_places_undecided_refuses_them_instead_of_asking_again_at_once() -> None:
    async def script(index: int, request: scheduler_pb2.PlaceManyRequest) -> AsyncIterator[Any]:
        yield scheduler_pb2.PlaceManyResponse(outcomes=[placed(1, "L1")])

    replicas = FakeReplicas(script)
    places = coalescer(replicas)
    results = await asyncio.wait_for(
        asyncio.gather(*(places.place(row(n)) for n in range(2)), return_exceptions=True), timeout=1.0
    )
    assert isinstance(results[0], PlaceRefused) and results[0].code == grpc.StatusCode.INTERNAL
    assert isinstance(results[1], scheduler_pb2.PlaceResponse)
    assert len(replicas.many) == 1
