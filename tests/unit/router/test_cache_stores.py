"""CacheStores: group commit of the router's cache stores (a fake stub
stands in for the cache service; tests/integration/cache covers the real one)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import grpc.aio
import pytest

from headrace.v1 import cache_pb2, generation_pb2
from services.router.cache_stores import CacheStores, PendingStore


class RpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=code.name)


class FakeCache:
    """Answers each call once `release` is set; records what each call carried."""

    def __init__(self, *, many: bool = True, failure: grpc.StatusCode | None = None) -> None:
        self.many = many
        self.failure = failure
        self.calls: list[tuple[str, list[cache_pb2.CacheStoreRequest]]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def StoreMany(self, request: cache_pb2.CacheStoreManyRequest, **_: Any) -> cache_pb2.CacheStoreManyResponse:
        self.calls.append(("many", list(request.stores)))
        await self.release.wait()
        if not self.many:
            raise RpcError(grpc.StatusCode.UNIMPLEMENTED)
        if self.failure is not None:
            raise RpcError(self.failure)
        return cache_pb2.CacheStoreManyResponse(
            results=[cache_pb2.CacheStoreResponse(stored=True, entry_id=s.response.text) for s in request.stores]
        )

    async def Store(self, request: cache_pb2.CacheStoreRequest, **_: Any) -> cache_pb2.CacheStoreResponse:
        self.calls.append(("one", [request]))
        return cache_pb2.CacheStoreResponse(stored=True, entry_id=request.response.text)


def pending(text: str, *, started: float | None = None, padding: int = 0) -> PendingStore:
    request = generation_pb2.GenerateRequest(prompt="p" * padding)
    return PendingStore("acme", "m@1", request, generation_pb2.GenerateResponse(text=text), [], started)


def stores_on(cache: FakeCache, max_bytes: int = 1 << 20) -> CacheStores:
    return CacheStores(cache, max_bytes_per_call=max_bytes)  # type: ignore[arg-type]


async def test_stores_that_come_while_a_call_is_in_flight_go_together_after_it() -> None:
    cache = FakeCache()
    stores = stores_on(cache)
    cache.release.clear()
    first = asyncio.ensure_future(stores.store(pending("a")))
    await asyncio.sleep(0.01)  # its call is in flight, held
    later = [asyncio.ensure_future(stores.store(pending(text))) for text in "bcd"]
    await asyncio.sleep(0.01)
    assert [[s.response.text for s in stores] for _, stores in cache.calls] == [["a"]]
    cache.release.set()
    results = await asyncio.gather(first, *later)
    assert [r.entry_id for r in results] == ["a", "b", "c", "d"]
    assert [[s.response.text for s in stores] for _, stores in cache.calls] == [["a"], ["b", "c", "d"]]


async def test_a_call_carries_stores_up_to_its_byte_bound_and_a_larger_one_alone() -> None:
    cache = FakeCache()
    stores = stores_on(cache, max_bytes=2500)
    texts = ["a", "b", "c", "big", "e"]
    results = await asyncio.gather(*(stores.store(pending(t, padding=5000 if t == "big" else 1000)) for t in texts))
    assert [r.entry_id for r in results] == texts
    assert [[s.response.text for s in stores] for _, stores in cache.calls] == [["a", "b"], ["c"], ["big"], ["e"]]


async def test_a_cache_without_store_many_gets_one_store_each_from_then_on() -> None:
    cache = FakeCache(many=False)
    stores = stores_on(cache)
    assert [r.entry_id for r in await asyncio.gather(*(stores.store(pending(t)) for t in "ab"))] == ["a", "b"]
    assert (await stores.store(pending("c"))).entry_id == "c"
    assert [kind for kind, _ in cache.calls] == ["many", "one", "one", "one"]
    assert (stores.many_calls, stores.single_calls) == (1, 3)


async def test_a_failed_call_fails_each_of_its_stores() -> None:
    stores = stores_on(FakeCache(failure=grpc.StatusCode.UNAVAILABLE))
    outcomes = await asyncio.gather(*(stores.store(pending(t)) for t in "ab"), return_exceptions=True)
    assert all(isinstance(o, grpc.aio.AioRpcError) and o.code() == grpc.StatusCode.UNAVAILABLE for o in outcomes)


async def test_a_stores_age_is_taken_when_its_call_goes() -> None:
    cache = FakeCache()
    stores = stores_on(cache)
    cache.release.clear()
    first = asyncio.ensure_future(stores.store(pending("a")))
    await asyncio.sleep(0.01)
    waiting = asyncio.ensure_future(stores.store(pending("b", started=time.monotonic())))
    await asyncio.sleep(0.2)  # held behind the call in flight
    cache.release.set()
    await asyncio.gather(first, waiting)
    (age,) = [s.request_age_s for s in cache.calls[1][1]]
    # An invalidation in that wait still overtakes it (the cache compares ages).
    assert age >= 0.2


async def test_a_caller_that_stops_waiting_leaves_its_store_in_the_call() -> None:
    cache = FakeCache()
    stores = stores_on(cache)
    cache.release.clear()
    call = asyncio.ensure_future(stores.store(pending("a")))
    await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    cache.release.set()
    await asyncio.sleep(0.01)
    assert [[s.response.text for s in stores] for _, stores in cache.calls] == [["a"]]


async def test_a_call_that_breaks_fails_its_stores_and_later_ones_still_go() -> None:
    class Broken(FakeCache):
        async def StoreMany(self, request: cache_pb2.CacheStoreManyRequest, **_: Any) -> Any:
            self.calls.append(("many", list(request.stores)))
            if len(self.calls) == 1:
                raise ValueError("a bug in a serializer")
            return await super().StoreMany(request)

    cache = Broken()
    stores = stores_on(cache)
    with pytest.raises(ValueError, match="a bug"):
        await stores.store(pending("a"))
    assert (await stores.store(pending("b"))).entry_id == "b"
