"""The scheduler replicas, as the services that lease slots (routers, batch
consumers) call them.

Place goes to the replicas in turn and fails over: a replica that answers
UNAVAILABLE (it is down, stopping, or its connection broke while the call
waited in its queue) is skipped and the next one asked, so a request
queued on a replica that dies is placed by a survivor before its first
token. Replicas whose connection is known broken are tried last. A lease
belongs to the replica that granted it, so RenewLease and Release go back
to that one; if it died, its leases died with it (the survivors see the
work only as the engines report it).

Calls that any replica answers alike (batch jobs and files in Redis, worker
listings) use `any_replica`: one channel over every replica with gRPC's
round_robin balancing, which stops sending to a replica once its
connection fails (a call in flight on it when it dies fails UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio

from headrace.runtime.channels import open_balanced_channel, open_channel
from headrace.runtime.config import LimitSettings
from headrace.runtime.release_coalescer import ReleaseCoalescer
from headrace.runtime.service_certs import Role
from headrace.runtime.service_identity import ServiceIdentity
from headrace.v1 import scheduler_pb2, scheduler_pb2_grpc

log = logging.getLogger(__name__)

# Bound on leases remembered (a caller that never releases must not grow
# the table without end): the oldest are forgotten first, and their
# Release goes to the first replica, where it is a no-op.
MAX_TRACKED_LEASES = 100_000

T = TypeVar("T")


class SchedulerReplicas:
    def __init__(self, targets: Sequence[str], limits: LimitSettings, identity: ServiceIdentity | None) -> None:
        """`identity`: this process's service credential (None: open dev mode)."""
        if not targets:
            raise ValueError("SchedulerReplicas needs at least one scheduler address")
        self.targets = list(targets)
        self._channels = [open_channel(t, limits, identity, server=Role.SCHEDULER) for t in self.targets]
        self._stubs = [scheduler_pb2_grpc.SchedulerStub(channel) for channel in self._channels]
        self._balanced = (
            open_balanced_channel(self.targets, limits, identity, server=Role.SCHEDULER)
            if len(targets) > 1
            else self._channels[0]
        )
        self.any_replica = scheduler_pb2_grpc.SchedulerStub(self._balanced)
        # Releases to each replica, coalesced while one is in flight.
        self.releases = [ReleaseCoalescer(stub) for stub in self._stubs]
        self._turn = itertools.count()
        # lease id -> index of the replica that granted it.
        self._owners: dict[str, int] = {}
        # Places that moved on to another replica after UNAVAILABLE.
        self.failovers = 0

    def order(self) -> list[int]:
        """Every replica once: those with a working connection in turn (each
        gets an even part of the calls: a replica's unused share of the
        workers is not lent to the others), then the broken ones (they may
        be back, so still tried)."""
        n = len(self._stubs)
        broken = [i for i in range(n) if self._channels[i].get_state() == grpc.ChannelConnectivity.TRANSIENT_FAILURE]
        working = [i for i in range(n) if i not in broken]
        if working:
            start = next(self._turn) % len(working)
            working = working[start:] + working[:start]
        return working + broken

    async def in_turn(self, call: Callable[[int], Awaitable[T]], *, method: str) -> tuple[int, T]:
        """`call(index)` on the replicas in turn (`order`) until one answers:
        (that replica's index, its answer). UNAVAILABLE moves on to the next
        replica (a failover); any other error, or the last replica's, is
        raised. The one failover rule of every call that any replica may
        take (Place, PlaceNowMany)."""
        order = self.order()
        for attempt, index in enumerate(order):
            try:
                return index, await call(index)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == len(order) - 1:
                    raise
                self.failovers += 1
                log.warning(
                    "scheduler %s: %s %s (%s); trying %s",
                    self.targets[index],
                    method,
                    exc.code().name,
                    exc.details(),
                    self.targets[order[attempt + 1]],
                )
        raise AssertionError("unreachable: the last attempt raises or returns")

    async def place(
        self, request: scheduler_pb2.PlaceRequest, *, options: Callable[[], dict[str, Any]] = dict
    ) -> scheduler_pb2.PlaceResponse:
        """A lease from the first replica that answers; `options` gives each
        attempt its call options (so a failover gets what is left of the
        deadline, not all of it again)."""

        async def place_at(index: int) -> scheduler_pb2.PlaceResponse:
            response: scheduler_pb2.PlaceResponse = await self._stubs[index].Place(request, **options())
            return response

        index, response = await self.in_turn(place_at, method="Place")
        self.remember(response.lease.lease_id, index)
        return response

    async def place_now_many(
        self, request: scheduler_pb2.PlaceNowManyRequest, *, options: Callable[[], dict[str, Any]] = dict
    ) -> tuple[int, scheduler_pb2.PlaceNowManyResponse]:
        """A router's places on a slot free now, from the first replica that
        answers: (its index, the outcomes). The caller remembers each lease
        as that replica's (services/router/places_now.py)."""

        async def place_now_many_at(index: int) -> scheduler_pb2.PlaceNowManyResponse:
            response: scheduler_pb2.PlaceNowManyResponse = await self._stubs[index].PlaceNowMany(request, **options())
            return response

        return await self.in_turn(place_now_many_at, method="PlaceNowMany")

    def place_many_at(
        self, index: int, request: scheduler_pb2.PlaceManyRequest, **options: Any
    ) -> grpc.aio.UnaryStreamCall[scheduler_pb2.PlaceManyRequest, scheduler_pb2.PlaceManyResponse]:
        """Batch rows' places on one replica: the outcomes' stream
        (place_coalescer.py fails over and remembers the leases)."""
        call: grpc.aio.UnaryStreamCall[scheduler_pb2.PlaceManyRequest, scheduler_pb2.PlaceManyResponse] = self._stubs[
            index
        ].PlaceMany(request, **options)
        return call

    def remember(self, lease_id: str, index: int) -> None:
        """Lease `lease_id` came from replica `index`: its renewals and
        release go there."""
        if len(self._owners) >= MAX_TRACKED_LEASES:
            self._owners.pop(next(iter(self._owners)))
        self._owners[lease_id] = index

    def set_release_window(self, window_s: Callable[[], float]) -> None:
        """Releases wait this long (asked each time) for others to share
        their call (a batch consumer's rows: nobody waits on a release)."""
        for coalescer in self.releases:
            coalescer.window_s = window_s

    async def flush_releases(self) -> None:
        """Releases waiting in a window go now (a consumer stopping)."""
        await asyncio.gather(*(coalescer.flush() for coalescer in self.releases))

    def owner_of(self, lease_id: str) -> str:
        """The address of the replica that granted a lease."""
        return self.targets[self._owners.get(lease_id, 0)]

    async def renew(self, request: scheduler_pb2.RenewLeaseRequest, **options: Any) -> scheduler_pb2.RenewLeaseResponse:
        stub = self._stubs[self._owners.get(request.lease_id, 0)]
        response: scheduler_pb2.RenewLeaseResponse = await stub.RenewLease(request, **options)
        return response

    async def release(self, request: scheduler_pb2.ReleaseRequest, **options: Any) -> scheduler_pb2.ReleaseResponse:
        """Back to the replica that granted it (coalesced with the releases
        that end while one is in flight: release_coalescer.py)."""
        return await self.releases[self._owners.pop(request.lease_id, 0)].release(request, **options)

    async def close(self) -> None:
        channels = {id(c): c for c in [*self._channels, self._balanced]}
        for channel in channels.values():
            await channel.close()
