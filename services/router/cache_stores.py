"""The router's stores to the cache, coalesced (Cache.StoreMany).

Every answered cacheable request is stored, and a unary gRPC call costs a
few hundred microseconds of CPU on each side whatever it carries. So a
store goes out at once when none is in flight, and the stores that come
while a call is in flight wait for it and then go together in one
StoreMany (group commit, as lease releases do: no timer, no wait beyond
the call in flight). Nobody waits on a store (the router spawns it off the
request's path), so a store's age is taken when its call goes: an
invalidation that comes while it waits still overtakes it. A coalesced
store is not on its request's trace.

A cache without StoreMany (an older one during an upgrade) answers
UNIMPLEMENTED: the waiting stores then go one Store each, and so do later
ones.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from dataclasses import dataclass

import grpc
import grpc.aio

from headrace.runtime.future_outcomes import fail, read_outcome, settle
from headrace.v1 import cache_pb2, cache_pb2_grpc, generation_pb2

log = logging.getLogger(__name__)

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


_Waiting = tuple[PendingStore, "asyncio.Future[cache_pb2.CacheStoreResponse]"]


class CacheStores:
    def __init__(self, stub: cache_pb2_grpc.CacheStub, *, max_bytes_per_call: int) -> None:
        """max_bytes_per_call: below the channel's message bound (one store
        larger than it still goes, alone)."""
        self._stub = stub
        self._max_bytes = max_bytes_per_call
        self._waiting: list[_Waiting] = []
        self._flusher: asyncio.Task[None] | None = None
        self._many_supported = True
        # Calls made, by kind (for tests and the benchmark's notes).
        self.single_calls = 0
        self.many_calls = 0

    async def store(self, pending: PendingStore) -> cache_pb2.CacheStoreResponse:
        """The cache's answer; raises the call's AioRpcError if it failed."""
        future: asyncio.Future[cache_pb2.CacheStoreResponse] = asyncio.get_running_loop().create_future()
        future.add_done_callback(read_outcome)
        self._waiting.append((pending, future))
        if self._flusher is None or self._flusher.done():
            # A context of its own: not the trace of the store that started it.
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(), name="cache-store-batch", context=contextvars.Context()
            )
        # Shielded: a caller that stops waiting does not take its store out of the batch.
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        batch: list[_Waiting] = []
        try:
            while self._waiting:
                batch = self._next_batch()
                await self._send(batch)
        finally:
            # Stopped midway (shutdown): no waiter hangs.
            for _, future in [*batch, *self._waiting]:
                future.cancel()
            self._waiting.clear()

    def _next_batch(self) -> list[_Waiting]:
        count, size = 0, 0
        for pending, _ in self._waiting[:MAX_PER_CALL]:
            size += pending.request.ByteSize() + pending.response.ByteSize()
            if count and size > self._max_bytes:
                break
            count += 1
        batch = self._waiting[:count]
        del self._waiting[:count]
        return batch

    async def _send(self, batch: list[_Waiting]) -> None:
        messages = [pending.message() for pending, _ in batch]
        if not self._many_supported:
            await asyncio.gather(*(self._send_one(m, f) for m, (_, f) in zip(messages, batch, strict=True)))
            return
        try:
            self.many_calls += 1
            answer = await self._stub.StoreMany(
                cache_pb2.CacheStoreManyRequest(stores=messages), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                log.info("cache has no StoreMany (older version): storing one by one")
                self._many_supported = False
                await self._send(batch)
                return
            for _, future in batch:
                fail(future, exc)
            return
        if len(answer.results) != len(batch):
            log.warning("StoreMany answered %d results for %d stores", len(answer.results), len(batch))
        for index, (_, future) in enumerate(batch):
            result = answer.results[index] if index < len(answer.results) else cache_pb2.CacheStoreResponse()
            settle(future, result)

    async def _send_one(
        self, message: cache_pb2.CacheStoreRequest, future: asyncio.Future[cache_pb2.CacheStoreResponse]
    ) -> None:
        try:
            self.single_calls += 1
            settle(future, await self._stub.Store(message, timeout=CALL_TIMEOUT_S))
        except grpc.aio.AioRpcError as exc:
            fail(future, exc)
