"""PlacesNow: the router's places on a slot free now, by group commit (a fake
set of scheduler replicas stands in; tests/integration/scheduler/
test_place_many.py covers the real scheduler and a dead replica)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from opentelemetry.sdk.trace import TracerProvider

from headrace.runtime.errors import ResourceExhausted
from headrace.v1 import scheduler_pb2
from services.router.places_now import PlacesNow


def unimplemented() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNIMPLEMENTED, grpc.aio.Metadata(), grpc.aio.Metadata(), "Method not found!"
    )


class FakeReplicas:
    """Leases `free` slots; every call waits for `go`."""

    targets = ["a", "b"]

    def __init__(self, free: int, *, many: bool = True) -> None:
        self.free = free
        self.many = many
        self.go = asyncio.Event()
        self.go.set()
        # PlaceNowMany calls also wait for this one.
        self.many_go = asyncio.Event()
        self.many_go.set()
        self.calls: list[tuple[str, list[str]]] = []
        self.owners: dict[str, int] = {}
        self.given_back: list[str] = []

    def order(self) -> list[int]:
        return [1, 0]

    def _decide(self, request: scheduler_pb2.PlaceRequest) -> scheduler_pb2.PlaceOutcome:
        if self.free <= 0:
            return scheduler_pb2.PlaceOutcome(
                refused=scheduler_pb2.PlaceRefusal(
                    code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="no free slot now", retry_after_s=0.5
                )
            )
        self.free -= 1
        lease = scheduler_pb2.Lease(lease_id=f"lease-{request.request_id}", worker_id="w")
        return scheduler_pb2.PlaceOutcome(placed=scheduler_pb2.PlaceResponse(lease=lease))

    async def place(
        self, request: scheduler_pb2.PlaceRequest, *, options: Callable[[], dict[str, Any]]
    ) -> scheduler_pb2.PlaceResponse:
        self.calls.append(("one", [request.request_id]))
        assert "timeout" in options()
        await self.go.wait()
        outcome = self._decide(request)
        if not outcome.HasField("placed"):
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(("retry-after", "0.5")),
                outcome.refused.message,
            )
        self.owners[outcome.placed.lease.lease_id] = 1
        return outcome.placed

    async def place_now_many(
        self, request: scheduler_pb2.PlaceNowManyRequest, *, options: Callable[[], dict[str, Any]]
    ) -> tuple[int, scheduler_pb2.PlaceNowManyResponse]:
        index = self.order()[0]
        self.calls.append((f"many@{index}", [p.request_id for p in request.places]))
        assert options()["timeout"] > 0
        await self.go.wait()
        await self.many_go.wait()
        if not self.many:
            raise unimplemented()
        outcomes = [self._decide(place) for place in request.places]
        for position, outcome in enumerate(outcomes):
            outcome.index = position
        # In another order than asked: the client puts them back by index.
        return index, scheduler_pb2.PlaceNowManyResponse(outcomes=list(reversed(outcomes)))

    def remember(self, lease_id: str, index: int) -> None:
        self.owners[lease_id] = index

    def give_back(self, lease: scheduler_pb2.Lease) -> None:
        self.given_back.append(lease.lease_id)


def online(name: str) -> scheduler_pb2.PlaceRequest:
    return scheduler_pb2.PlaceRequest(request_id=name, model_version="m@1", tenant="t", only_if_free=True)


def options() -> dict[str, Any]:
    return {"timeout": 5.0}


async def held_first(free: int, *, many: bool = True) -> tuple[FakeReplicas, PlacesNow, asyncio.Future[Any]]:
    """Replicas with `free` slots, and a first place whose own call is in
    flight, held until `replicas.go` is set."""
    replicas = FakeReplicas(free=free, many=many)
    places = PlacesNow(replicas, give_back=replicas.give_back)  # type: ignore[arg-type]
    replicas.go.clear()
    first = asyncio.ensure_future(places.place(online("a"), options=options))
    await asyncio.sleep(0.01)
    return replicas, places, first


async def test_places_that_come_while_one_is_in_flight_go_together_each_with_its_own_outcome() -> None:
    replicas, places, first = await held_first(3)
    later = [asyncio.ensure_future(places.place(online(name), options=options)) for name in "bcd"]
    await asyncio.sleep(0.05)
    replicas.go.set()
    outcomes = await asyncio.gather(first, *later, return_exceptions=True)
    assert replicas.calls == [("one", ["a"]), ("many@1", ["b", "c", "d"])]
    # Three slots: a, b and c leased (each its own), d told there is none now.
    assert [o.lease.lease_id for o in outcomes[:3]] == ["lease-a", "lease-b", "lease-c"]  # type: ignore[union-attr]
    assert isinstance(outcomes[3], ResourceExhausted)
    assert outcomes[3].retry_after_s == 0.5
    # Each lease's release goes to the replica that granted it.
    assert replicas.owners == {"lease-a": 1, "lease-b": 1, "lease-c": 1}


async def test_a_place_left_before_its_call_is_not_sent_and_one_left_after_goes_back_unused() -> None:
    replicas, places, first = await held_first(5)
    replicas.many_go.clear()
    b, c, d = (asyncio.ensure_future(places.place(online(name), options=options)) for name in "bcd")
    await asyncio.sleep(0.01)
    # c's caller leaves while it waits for a's call: it is never sent.
    c.cancel()
    replicas.go.set()
    await first
    await asyncio.sleep(0.01)
    assert replicas.calls == [("one", ["a"]), ("many@1", ["b", "d"])]
    # d's caller leaves while its call is in flight: its lease comes, and goes back.
    d.cancel()
    replicas.many_go.set()
    assert (await b).lease.lease_id == "lease-b"
    with pytest.raises(asyncio.CancelledError):
        await d
    assert replicas.given_back == ["lease-d"]
    assert c.cancelled()


async def test_a_scheduler_without_place_now_many_gets_one_place_each() -> None:
    replicas, places, first = await held_first(5, many=False)
    later = [asyncio.ensure_future(places.place(online(name), options=options)) for name in "bc"]
    await asyncio.sleep(0.01)
    replicas.go.set()
    leased = await asyncio.gather(first, *later)
    assert [p.lease.lease_id for p in leased] == ["lease-a", "lease-b", "lease-c"]
    assert [kind for kind, _ in replicas.calls] == ["one", "many@1", "one", "one"]
    # Later places go one each, at once.
    await places.place(online("d"), options=options)
    assert replicas.calls[-1] == ("one", ["d"])


async def test_only_places_on_a_slot_free_now() -> None:
    places = PlacesNow(FakeReplicas(free=1), give_back=lambda lease: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only_if_free"):
        await places.place(scheduler_pb2.PlaceRequest(request_id="x", model_version="m@1"), options=options)


async def test_a_traced_requests_place_goes_alone_on_its_trace_even_while_one_is_in_flight() -> None:
    replicas, places, first = await held_first(5)
    tracer = TracerProvider().get_tracer("test")

    async def traced_request() -> scheduler_pb2.PlaceResponse:
        with tracer.start_as_current_span("traced request"):
            return await places.place(online("traced"), options=options)

    traced = asyncio.ensure_future(traced_request())
    untraced = asyncio.ensure_future(places.place(online("b"), options=options))
    await asyncio.sleep(0.01)
    replicas.go.set()
    await asyncio.gather(first, traced, untraced)
    # The traced one went as a Place of its own, beside the one in flight;
    # the untraced one waited and went in the next call.
    assert replicas.calls[:2] == [("one", ["a"]), ("one", ["traced"])]
    assert replicas.calls[2:] == [("one", ["b"])]
