"""Lease releases to one scheduler replica, coalesced by group commit
(headrace/runtime/group_commit.py): a release goes at once, with its own
call options and trace, when none is in flight; those that end while one
is go together in one ReleaseMany. A batch consumer sets a window (nobody
waits on its releases) and flushes it when it stops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from headrace.runtime.group_commit import GroupCommit
from headrace.v1 import scheduler_pb2, scheduler_pb2_grpc

# Leases per ReleaseMany (the scheduler takes up to 1,024).
MAX_PER_CALL = 256
# Per coalesced call: the leases expire on their own if it fails.
CALL_TIMEOUT_S = 5.0


class ReleaseCoalescer(GroupCommit[scheduler_pb2.ReleaseRequest, scheduler_pb2.ReleaseResponse]):
    def __init__(self, stub: scheduler_pb2_grpc.SchedulerStub, *, max_per_call: int = MAX_PER_CALL) -> None:
        self._stub = stub
        super().__init__(
            name="lease-release-batch",
            many=self._release_many,
            one=self._release_one,
            # Not this protocol's answer: counted as not released.
            missing=scheduler_pb2.ReleaseResponse,
            max_per_call=max_per_call,
        )

    async def release(self, request: scheduler_pb2.ReleaseRequest, **options: Any) -> scheduler_pb2.ReleaseResponse:
        """Give the lease back; the scheduler's answer. Raises the call's
        AioRpcError if it failed (the lease then expires on its own)."""
        return await self.call(request, **options)

    async def _release_one(
        self, request: scheduler_pb2.ReleaseRequest, **options: Any
    ) -> scheduler_pb2.ReleaseResponse:
        response: scheduler_pb2.ReleaseResponse = await self._stub.Release(
            request, **(options or {"timeout": CALL_TIMEOUT_S})
        )
        return response

    async def _release_many(
        self, requests: Sequence[scheduler_pb2.ReleaseRequest]
    ) -> Sequence[scheduler_pb2.ReleaseResponse]:
        answer: scheduler_pb2.ReleaseManyResponse = await self._stub.ReleaseMany(
            scheduler_pb2.ReleaseManyRequest(releases=requests), timeout=CALL_TIMEOUT_S
        )
        return answer.results
