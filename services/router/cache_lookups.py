"""The router's cache lookups, coalesced (Cache.LookupMany, by group
commit: headrace/runtime/group_commit.py). A lookup goes at once when
none is in flight; those that come while one is, wait for it and go
together, each with the budget its caller has left when the call goes (the
cache answers MISS in time rather than late). A caller that gives up
before its lookup goes takes it out. A traced request's lookup goes alone,
on its trace (cache_client.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from headrace.runtime.group_commit import GroupCommit
from headrace.v1 import cache_pb2, cache_pb2_grpc, generation_pb2

# Lookups per LookupMany (the cache takes up to 256).
MAX_PER_CALL = 64
# A call waits this much beyond its longest budget for the cache's answers.
_CALL_MARGIN_S = 0.05


@dataclass(eq=False)
class PendingLookup:
    request: cache_pb2.CacheLookupRequest
    # time.monotonic() at which its caller stops waiting.
    deadline: float

    def timed(self, now: float) -> cache_pb2.TimedLookup:
        return cache_pb2.TimedLookup(lookup=self.request, budget_s=max(0.001, self.deadline - now))

    def size(self) -> int:
        return self.request.ByteSize()


class CacheLookups:
    def __init__(self, stub: cache_pb2_grpc.CacheStub, *, max_bytes_per_call: int) -> None:
        self._stub = stub
        self._calls: GroupCommit[PendingLookup, cache_pb2.CacheLookupResponse] = GroupCommit(
            name="cache-lookup-batch",
            many=self._many,
            one=self._one,
            size=PendingLookup.size,
            missing=lambda: cache_pb2.CacheLookupResponse(outcome=generation_pb2.CACHE_OUTCOME_BYPASS),
            max_per_call=MAX_PER_CALL,
            max_bytes_per_call=max_bytes_per_call,
        )

    @property
    def single_calls(self) -> int:
        return self._calls.single_calls

    @property
    def many_calls(self) -> int:
        return self._calls.many_calls

    async def lookup(self, request: cache_pb2.CacheLookupRequest, timeout_s: float) -> cache_pb2.CacheLookupResponse:
        """The cache's answer; raises TimeoutError after `timeout_s`, or the
        call's AioRpcError if it failed."""
        pending = PendingLookup(request, time.monotonic() + timeout_s)
        # wait_for cancels the future when the time is up: a lookup not sent yet stays unsent.
        return await asyncio.wait_for(self._calls.submit(pending), timeout_s)

    async def _many(self, lookups: Sequence[PendingLookup]) -> Sequence[cache_pb2.CacheLookupResponse]:
        now = time.monotonic()
        request = cache_pb2.CacheLookupManyRequest(lookups=[pending.timed(now) for pending in lookups])
        longest = max(pending.deadline for pending in lookups) - now
        answer: cache_pb2.CacheLookupManyResponse = await self._stub.LookupMany(
            request, timeout=max(0.001, longest) + _CALL_MARGIN_S
        )
        return answer.results

    async def _one(self, pending: PendingLookup) -> cache_pb2.CacheLookupResponse:
        timeout = max(0.001, pending.deadline - time.monotonic())
        response: cache_pb2.CacheLookupResponse = await self._stub.Lookup(pending.request, timeout=timeout)
        return response
