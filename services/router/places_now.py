"""The router's places made beside its cache lookups (a slot free now or
none: PlaceRequest.only_if_free), coalesced by group commit
(Scheduler.PlaceNowMany; headrace/runtime/group_commit.py).

Every cacheable request places one while the cache is asked, and a unary
Place costs a few hundred microseconds of CPU on each side: under load a
good part of what the router and the scheduler do per request. A place
goes at once, as its own Place (the caller's deadline, the replicas'
failover), when none is in flight; those that come while one is wait for
it and go together. None of them ever queues at the scheduler, so a call
in flight ends within one scheduling turn and nobody waits behind a queue.

A PlaceNowMany call goes to the replicas in turn as Place does (the
replicas' one failover rule, SchedulerReplicas.in_turn). Each lease is remembered as
the granting replica's (its renewals and release go there). A place whose
caller stopped waiting after its call went gives its lease back unused at
once (the leasing's give_back). A traced request's place always goes
alone, on its trace.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from headrace.runtime.channels import propagated_timeout
from headrace.runtime.errors import RETRY_AFTER_KEY, HeadraceError, error_from_status, status_code_numbered
from headrace.runtime.group_commit import GroupCommit
from headrace.runtime.scheduler_replicas import SchedulerReplicas
from headrace.v1 import scheduler_pb2

# Places per PlaceNowMany (the scheduler takes up to 256).
MAX_PER_CALL = 64
# A call for places whose callers set no deadline: they never queue, so
# this only bounds a scheduler that stopped answering.
_UNBOUNDED_CALL_S = 10.0


@dataclass(eq=False)
class PendingPlace:
    request: scheduler_pb2.PlaceRequest
    # time.monotonic() at which its caller stops waiting (None: never).
    deadline: float | None
    # Its caller stopped waiting: a lease granted for it goes back unused.
    abandoned: bool = False

    def timeout_s(self, now: float) -> float:
        return _UNBOUNDED_CALL_S if self.deadline is None else max(0.001, self.deadline - now)


def refusal_error(refused: scheduler_pb2.PlaceRefusal) -> HeadraceError:
    """The error Place would have raised for this refusal."""
    code = status_code_numbered(refused.code)
    trailer = ((RETRY_AFTER_KEY, repr(refused.retry_after_s)),) if refused.retry_after_s > 0 else ()
    return error_from_status(code, refused.message, trailer)


class PlacesNow(GroupCommit[PendingPlace, scheduler_pb2.PlaceOutcome]):
    def __init__(self, replicas: SchedulerReplicas, *, give_back: Callable[[scheduler_pb2.Lease], None]) -> None:
        """give_back: a lease that will not be used, back to its replica
        (off the caller's path)."""
        self._replicas = replicas
        self._give_back = give_back
        super().__init__(
            name="places-now",
            many=self._place_many,
            one=self._place_one,
            missing=lambda: scheduler_pb2.PlaceOutcome(
                refused=scheduler_pb2.PlaceRefusal(
                    code=grpc.StatusCode.INTERNAL.value[0], message="the scheduler's answer left this place out"
                )
            ),
            max_per_call=MAX_PER_CALL,
            alone_when_traced=True,
        )

    async def place(
        self, request: scheduler_pb2.PlaceRequest, *, options: Callable[[], dict[str, Any]]
    ) -> scheduler_pb2.PlaceResponse:
        """A lease on a slot free now. Raises HeadraceError when there is none
        (ResourceExhausted) or the scheduler refused; grpc.aio.AioRpcError
        when the call itself failed. `options`: the call options of a place
        that goes alone (the caller's deadline and metadata)."""
        if not request.only_if_free:
            raise ValueError("PlacesNow is for places on a slot free now only (only_if_free)")
        timeout = propagated_timeout(None)
        pending = PendingPlace(request, None if timeout is None else time.monotonic() + timeout)
        try:
            outcome = await self.call(pending, keep_if_abandoned=False, options=options)
        except asyncio.CancelledError:
            pending.abandoned = True
            raise
        if outcome.HasField("placed"):
            return outcome.placed
        raise refusal_error(outcome.refused)

    async def _place_one(
        self, pending: PendingPlace, *, options: Callable[[], dict[str, Any]] | None = None
    ) -> scheduler_pb2.PlaceOutcome:
        if options is None:
            # Sent for a caller that joined a group (a scheduler without
            # PlaceNowMany): its own deadline, no trace.
            def options() -> dict[str, Any]:
                return {"timeout": pending.timeout_s(time.monotonic())}

        response = await self._replicas.place(pending.request, options=options)
        return scheduler_pb2.PlaceOutcome(placed=response)

    async def _place_many(self, places: Sequence[PendingPlace]) -> Sequence[scheduler_pb2.PlaceOutcome]:
        def options() -> dict[str, Any]:
            # The longest any of them still waits (a failover gets what is left).
            now = time.monotonic()
            return {"timeout": max(pending.timeout_s(now) for pending in places)}

        request = scheduler_pb2.PlaceNowManyRequest(places=[pending.request for pending in places])
        index, answer = await self._replicas.place_now_many(request, options=options)
        return self._settled(index, places, answer.outcomes)

    def _settled(
        self, index: int, places: Sequence[PendingPlace], outcomes: Sequence[scheduler_pb2.PlaceOutcome]
    ) -> Sequence[scheduler_pb2.PlaceOutcome]:
        """The outcomes by their places' positions (one left out: `missing`)."""
        by_place = [self._missing() for _ in places]
        for outcome in outcomes:
            if outcome.index < len(places):
                by_place[outcome.index] = outcome
        for pending, outcome in zip(places, by_place, strict=True):
            if not outcome.HasField("placed"):
                continue
            self._replicas.remember(outcome.placed.lease.lease_id, index)
            if pending.abandoned:
                # Nobody will use it: back at once rather than when it expires.
                self._give_back(outcome.placed.lease)
        return by_place
