"""The router's stores to the cache, coalesced (Cache.StoreMany, by group
commit: headrace/runtime/group_commit.py). Nobody waits on a store (the
router spawns it off the request's path); its age is taken when its call
goes, so an invalidation that comes while it waits still overtakes it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from headrace.runtime.channels import call_options
from headrace.runtime.group_commit import GroupCommit
from headrace.v1 import cache_pb2, cache_pb2_grpc, generation_pb2

# Stores per StoreMany (the cache takes up to 256).
MAX_PER_CALL = 64
CALL_TIMEOUT_S = 5.0


@dataclass(eq=False)
class PendingStore:
    """An answer to store; `started`: when its request arrived (time.monotonic())."""

    tenant: str
    model_version: str
    request: generation_pb2.GenerateRequest
    response: generation_pb2.GenerateResponse
    deltas: list[cache_pb2.CachedDelta]
    started: float | None

    def message(self) -> cache_pb2.CacheStoreRequest:
        return cache_pb2.CacheStoreRequest(
            tenant=self.tenant,
            model_version=self.model_version,
            request=self.request,
            response=self.response,
            deltas=self.deltas,
            request_age_s=0.0 if self.started is None else time.monotonic() - self.started,
        )

    def size(self) -> int:
        return self.request.ByteSize() + self.response.ByteSize()


class CacheStores(GroupCommit[PendingStore, cache_pb2.CacheStoreResponse]):
    def __init__(self, stub: cache_pb2_grpc.CacheStub, *, max_bytes_per_call: int) -> None:
        """max_bytes_per_call: below the channel's message bound (one store
        larger than it still goes, alone)."""
        self._stub = stub
        super().__init__(
            name="cache-store-batch",
            many=self._store_many,
            one=self._store_one,
            missing=cache_pb2.CacheStoreResponse,
            max_per_call=MAX_PER_CALL,
            size=PendingStore.size,
            max_bytes_per_call=max_bytes_per_call,
        )

    async def _store_one(self, pending: PendingStore, **_: Any) -> cache_pb2.CacheStoreResponse:
        response: cache_pb2.CacheStoreResponse = await self._stub.Store(
            pending.message(), **call_options(timeout=CALL_TIMEOUT_S)
        )
        return response

    async def _store_many(self, stores: Sequence[PendingStore]) -> Sequence[cache_pb2.CacheStoreResponse]:
        request = cache_pb2.CacheStoreManyRequest(stores=[pending.message() for pending in stores])
        answer: cache_pb2.CacheStoreManyResponse = await self._stub.StoreMany(request, timeout=CALL_TIMEOUT_S)
        return answer.results
