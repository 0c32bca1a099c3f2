"""The router's cache lookups, coalesced (Cache.LookupMany, by group
commit: headrace/runtime/group_commit.py). A lookup goes at once, as its
own Lookup call, when none is in flight; those that come while one is
wait for it and go together, each with the budget its caller has left
when the call goes (the cache answers MISS in time rather than late). A
caller that gives up before its lookup goes takes it out. A traced
request's lookup always goes alone, on its trace."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from headrace.runtime.channels import call_options
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

    def budget_s(self, now: float) -> float:
        return max(0.001, self.deadline - now)

    def size(self) -> int:
        return self.request.ByteSize()


class CacheLookups(GroupCommit[PendingLookup, cache_pb2.CacheLookupResponse]):
    def __init__(self, stub: cache_pb2_grpc.CacheStub, *, max_bytes_per_call: int) -> None:
        self._stub = stub
        super().__init__(
            name="cache-lookup-batch",
            many=self._lookup_many,
            one=self._lookup_one,
            missing=lambda: cache_pb2.CacheLookupResponse(outcome=generation_pb2.CACHE_OUTCOME_BYPASS),
            max_per_call=MAX_PER_CALL,
            size=PendingLookup.size,
            max_bytes_per_call=max_bytes_per_call,
            alone_when_traced=True,
        )

    async def lookup(self, request: cache_pb2.CacheLookupRequest, timeout_s: float) -> cache_pb2.CacheLookupResponse:
        """The cache's answer; raises TimeoutError after `timeout_s`, or the
        call's AioRpcError if it failed."""
        pending = PendingLookup(request, time.monotonic() + timeout_s)
        # Timed out before its call goes, the lookup is left out of it (a
        # timeout scope: no task of its own per lookup, as wait_for makes).
        async with asyncio.timeout(timeout_s):
            return await self.call(pending, keep_if_abandoned=False)

    async def _lookup_one(self, pending: PendingLookup, **_: Any) -> cache_pb2.CacheLookupResponse:
        response: cache_pb2.CacheLookupResponse = await self._stub.Lookup(
            pending.request, **call_options(timeout=pending.budget_s(time.monotonic()))
        )
        return response

    async def _lookup_many(self, lookups: Sequence[PendingLookup]) -> Sequence[cache_pb2.CacheLookupResponse]:
        now = time.monotonic()
        timed = [cache_pb2.TimedLookup(lookup=pending.request, budget_s=pending.budget_s(now)) for pending in lookups]
        request = cache_pb2.CacheLookupManyRequest(lookups=timed)
        longest = max(pending.budget_s(now) for pending in lookups)
        answer: cache_pb2.CacheLookupManyResponse = await self._stub.LookupMany(
            request, timeout=longest + _CALL_MARGIN_S
        )
        return answer.results
