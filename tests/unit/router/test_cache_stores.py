"""CacheStores: the router's cache stores by group commit (a fake stub
stands in for the cache service; tests/integration/cache covers the real
one, tests/unit/runtime/test_release_coalescer.py the shared mechanics)."""

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
    def __init__(self, code: grpc.StatusCode, details: str | None = None) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details or code.name)


class FakeCache:
    """Answers each call once `release` is set; records what each call carried."""

    def __init__(
        self, *, many: bool = True, failure: grpc.StatusCode | None = None, failure_details: str | None = None
    ) -> None:
        self.many = many
        self.failure = failure
        self.failure_details = failure_details
        self.calls: list[tuple[str, list[cache_pb2.CacheStoreRequest]]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def StoreMany(self, request: cache_pb2.CacheStoreManyRequest, **_: Any) -> cache_pb2.CacheStoreManyResponse:
        self.calls.append(("many", list(request.stores)))
        await self.release.wait()
        if not self.many:
            raise RpcError(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        if self.failure is not None:
            raise RpcError(self.failure, self.failure_details)
        return cache_pb2.CacheStoreManyResponse(
            results=[cache_pb2.CacheStoreResponse(stored=True, entry_id=s.response.text) for s in request.stores]
        )

    async def Store(self, request: cache_pb2.CacheStoreRequest, **_: Any) -> cache_pb2.CacheStoreResponse:
        self.calls.append(("one", [request]))
        await self.release.wait()
        return cache_pb2.CacheStoreResponse(stored=True, entry_id=request.response.text)


def pending(text: str, *, started: float | None = None, padding: int = 0) -> PendingStore:
    request = generation_pb2.GenerateRequest(prompt="p" * padding)
    return PendingStore("acme", "m@1", request, generation_pb2.GenerateResponse(text=text), [], started)


def stores_on(cache: FakeCache, max_bytes: int = 1 << 20) -> CacheStores:
    return CacheStores(cache, max_bytes_per_call=max_bytes)  # type: ignore[arg-type]


def carried(cache: FakeCache) -> list[tuple[str, list[str]]]:
    return [(kind, [s.response.text for s in stores]) for kind, stores in cache.calls]


async def held_first(cache: FakeCache, stores: CacheStores) -> asyncio.Future[cache_pb2.CacheStoreResponse]:
    """A first store whose own call is in flight, held until `release` is set."""
    cache.release.clear()
    first = asyncio.ensure_future(stores.call(pending("a")))
    await asyncio.sleep(0.01)
    return first


async def test_a_store_goes_alone_at_once_and_those_that_come_meanwhile_go_together() -> None:
    cache = FakeCache()
    stores = stores_on(cache)
    first = await held_first(cache, stores)
    later = [asyncio.ensure_future(stores.call(pending(text))) for text in "bcd"]
    await asyncio.sleep(0.01)
    assert carried(cache) == [("one", ["a"])]
    cache.release.set()
    results = await asyncio.gather(first, *later)
    assert [r.entry_id for r in results] == ["a", "b", "c", "d"]
    assert carried(cache) == [("one", ["a"]), ("many", ["b", "c", "d"])]


async def test_a_call_carries_stores_up_to_its_byte_bound_and_a_larger_one_alone() -> None:
    cache = FakeCache()
    stores = stores_on(cache, max_bytes=2500)
    first = await held_first(cache, stores)
    texts = ["b", "c", "d", "big", "f"]
    later = [asyncio.ensure_future(stores.call(pending(t, padding=5000 if t == "big" else 1000))) for t in texts]
    await asyncio.sleep(0.01)
    cache.release.set()
    results = await asyncio.gather(first, *later)
    assert [r.entry_id for r in results] == ["a", *texts]
    assert carried(cache)[1:] == [("many", ["b", "c"]), ("one", ["d"]), ("one", ["big"]), ("one", ["f"])]


async def test_a_cache_without_store_many_gets_one_store_each() -> None:
    cache = FakeCache(many=False)
    stores = stores_on(cache)
    first = await held_first(cache, stores)
    later = [asyncio.ensure_future(stores.call(pending(t))) for t in "bc"]
    await asyncio.sleep(0.01)
    cache.release.set()
    results = await asyncio.gather(first, *later)
    assert [r.entry_id for r in results] == ["a", "b", "c"]
    assert carried(cache) == [("one", ["a"]), ("many", ["b", "c"]), ("one", ["b"]), ("one", ["c"])]


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (grpc.StatusCode.UNAVAILABLE, None),
        # UNIMPLEMENTED in the method's own words: StoreMany exists (not an
        # older cache), so its stores fail with it.
        (grpc.StatusCode.UNIMPLEMENTED, "this cache cannot store that"),
    ],
)
async def test_a_failed_call_fails_each_of_its_stores_and_later_ones_still_go_together(
    code: grpc.StatusCode, details: str | None
) -> None:
    cache = FakeCache(failure=code, failure_details=details)
    stores = stores_on(cache)
    first = await held_first(cache, stores)
    later = [asyncio.ensure_future(stores.call(pending(t))) for t in "bc"]
    await asyncio.sleep(0.01)
    cache.release.set()
    await first
    outcomes = await asyncio.gather(*later, return_exceptions=True)
    assert all(isinstance(o, grpc.aio.AioRpcError) and o.code() == code for o in outcomes)
    assert carried(cache) == [("one", ["a"]), ("many", ["b", "c"])]
    cache.failure = None
    cache.release.clear()
    held = asyncio.ensure_future(stores.call(pending("d")))
    await asyncio.sleep(0.01)
    waiting = [asyncio.ensure_future(stores.call(pending(t))) for t in "ef"]
    await asyncio.sleep(0.01)
    cache.release.set()
    await asyncio.gather(held, *waiting)
    assert carried(cache)[2:] == [("one", ["d"]), ("many", ["e", "f"])]


async def test_a_stores_age_is_taken_when_its_call_goes() -> None:
    cache = FakeCache()
    stores = stores_on(cache)
    first = await held_first(cache, stores)
    waiting = [asyncio.ensure_future(stores.call(pending(t, started=time.monotonic()))) for t in "bc"]
    await asyncio.sleep(0.2)  # held behind the call in flight
    cache.release.set()
    await asyncio.gather(first, *waiting)
    # An invalidation in that wait still overtakes them (the cache compares ages).
    assert all(s.request_age_s >= 0.2 for s in cache.calls[1][1])


async def test_a_call_that_breaks_fails_its_stores_and_later_ones_still_go() -> None:
    class Broken(FakeCache):
        async def StoreMany(self, request: cache_pb2.CacheStoreManyRequest, **_: Any) -> Any:
            raise ValueError("a bug in a serializer")

    cache = Broken()
    stores = stores_on(cache)
    first = await held_first(cache, stores)
    later = [asyncio.ensure_future(stores.call(pending(t))) for t in "bc"]
    await asyncio.sleep(0.01)
    cache.release.set()
    await first
    with pytest.raises(ValueError, match="a bug"):
        await later[0]
    assert (await stores.call(pending("d"))).entry_id == "d"
