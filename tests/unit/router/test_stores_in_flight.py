"""The same question asked again while its answer is on its way to the
cache waits for that store and hits (CacheClient with stores_in_flight.py;
a fake stub stands in for the cache service, whose stores take as long as
the test says). tests/e2e/test_real_model_mesh.py asks it through the
real mesh."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from headrace.runtime.config import CacheSettings
from headrace.v1 import cache_pb2, generation_pb2
from services.router.cache_client import CacheClient
from services.router.stores_in_flight import StoresInFlight, request_identity

HIT = generation_pb2.CACHE_OUTCOME_HIT_EXACT
MISS = generation_pb2.CACHE_OUTCOME_MISS


class SlowCache:
    """Keeps answers by question; a store lands once `landing` is set."""

    def __init__(self) -> None:
        self.answers: dict[bytes, generation_pb2.GenerateResponse] = {}
        self.landing = asyncio.Event()
        self.lookups = 0

    async def _land(self, store: cache_pb2.CacheStoreRequest) -> cache_pb2.CacheStoreResponse:
        await self.landing.wait()
        self.answers[request_identity(store.tenant, store.request)] = store.response
        return cache_pb2.CacheStoreResponse(stored=True)

    async def StoreMany(self, request: cache_pb2.CacheStoreManyRequest, **_: Any) -> cache_pb2.CacheStoreManyResponse:
        return cache_pb2.CacheStoreManyResponse(results=[await self._land(store) for store in request.stores])

    async def Store(self, request: cache_pb2.CacheStoreRequest, **_: Any) -> cache_pb2.CacheStoreResponse:
        return await self._land(request)

    def _answer(self, lookup: cache_pb2.CacheLookupRequest) -> cache_pb2.CacheLookupResponse:
        self.lookups += 1
        found = self.answers.get(request_identity(lookup.tenant, lookup.request))
        if found is None:
            return cache_pb2.CacheLookupResponse(outcome=MISS)
        return cache_pb2.CacheLookupResponse(outcome=HIT, response=found)

    async def LookupMany(
        self, request: cache_pb2.CacheLookupManyRequest, **_: Any
    ) -> cache_pb2.CacheLookupManyResponse:
        return cache_pb2.CacheLookupManyResponse(results=[self._answer(timed.lookup) for timed in request.lookups])

    async def Lookup(self, request: cache_pb2.CacheLookupRequest, **_: Any) -> cache_pb2.CacheLookupResponse:
        return self._answer(request)


def question(text: str, **fields: Any) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        model="smollm2",
        messages=[generation_pb2.ChatMessage(role="user", content=text)],
        sampling=generation_pb2.SamplingParams(max_tokens=16, temperature=0.0),
        **fields,
    )


def client_on(cache: SlowCache, lookup_timeout_s: float = 2.0) -> CacheClient:
    settings = CacheSettings(lookup_timeout_s=lookup_timeout_s)
    return CacheClient(cache, settings, max_message_bytes=1 << 20)  # type: ignore[arg-type]


def store_of(client: CacheClient, request: generation_pb2.GenerateRequest, text: str) -> Any:
    return client.store(
        tenant="acme", model_version="smollm2@1", request=request, response=generation_pb2.GenerateResponse(text=text)
    )


async def test_a_question_asked_again_while_its_answer_is_stored_hits() -> None:
    cache = SlowCache()
    client = client_on(cache)
    asked = question("Count from one to five.")
    # Known as soon as store() is called, before its coroutine first runs.
    store = asyncio.create_task(store_of(client, asked, "1 2 3 4 5"))
    # The same question, another session and user: the same answer.
    again = question("Count from one to five.", session_id="s2", user="bob")
    lookup = asyncio.create_task(client.lookup(tenant="acme", model_version="smollm2@1", request=again))
    await asyncio.sleep(0.05)
    assert not lookup.done(), "the lookup went before the store landed"
    cache.landing.set()
    found = await lookup
    assert found.outcome == HIT and found.response.text == "1 2 3 4 5"
    await store
    assert not client._in_flight


async def test_another_question_or_tenant_does_not_wait() -> None:
    cache = SlowCache()
    client = client_on(cache)
    store = asyncio.create_task(store_of(client, question("Count from one to five."), "1 2 3 4 5"))
    for tenant, request in (
        ("acme", question("Count from one to six.")),
        ("globex", question("Count from one to five.")),
    ):
        began = time.monotonic()
        found = await client.lookup(tenant=tenant, model_version="smollm2@1", request=request)
        assert found.outcome == MISS
        assert time.monotonic() - began < 1.0
    cache.landing.set()
    await store


async def test_a_store_that_does_not_land_holds_a_lookup_no_longer_than_its_timeout() -> None:
    cache = SlowCache()
    client = client_on(cache, lookup_timeout_s=0.1)
    asked = question("Count from one to five.")
    store = asyncio.create_task(store_of(client, asked, "1 2 3 4 5"))
    began = time.monotonic()
    found = await client.lookup(tenant="acme", model_version="smollm2@1", request=asked)
    waited = time.monotonic() - began
    # The store took the lookup's whole budget: answered as a slow cache
    # is (a bypass, not asked), after the bound and not the store's whole
    # time; the store itself goes on, its marker intact, to land later.
    assert found.outcome == generation_pb2.CACHE_OUTCOME_BYPASS and cache.lookups == 0
    assert 0.08 <= waited < 1.0
    assert client._in_flight
    cache.landing.set()
    await store
    assert not client._in_flight
    found = await client.lookup(tenant="acme", model_version="smollm2@1", request=asked)
    assert found.outcome == HIT


async def test_a_failed_store_releases_its_waiters() -> None:
    class FailingCache(SlowCache):
        async def _land(self, store: cache_pb2.CacheStoreRequest) -> cache_pb2.CacheStoreResponse:
            await self.landing.wait()
            raise ConnectionResetError("cache went away")

    cache = FailingCache()
    client = client_on(cache)
    asked = question("Count from one to five.")
    store = asyncio.create_task(store_of(client, asked, "1 2 3 4 5"))
    lookup = asyncio.create_task(client.lookup(tenant="acme", model_version="smollm2@1", request=asked))
    await asyncio.sleep(0.02)
    cache.landing.set()
    with pytest.raises(ConnectionResetError):
        await store
    assert (await asyncio.wait_for(lookup, 1.0)).outcome == MISS
    assert not client._in_flight


async def test_two_stores_of_one_question_are_both_waited_for() -> None:
    in_flight = StoresInFlight()
    identity = request_identity("acme", question("hello"))
    first, second = in_flight.begin(identity), in_flight.begin(identity)
    waiter = asyncio.create_task(in_flight.settled(identity, 1.0))
    in_flight.finish(identity, first)
    await asyncio.sleep(0.01)
    assert not waiter.done()
    in_flight.finish(identity, second)
    assert await waiter is True
    # Nothing under way: settled at once.
    assert not in_flight and await in_flight.settled(identity, 0.0) is True


async def test_the_wait_and_the_lookup_share_one_budget() -> None:
    class SlowLookups(SlowCache):
        async def Lookup(self, request: cache_pb2.CacheLookupRequest, **_: Any) -> cache_pb2.CacheLookupResponse:
            await asyncio.sleep(0.3)
            return self._answer(request)

    # The store lands after 0.3 s of a 0.5 s budget; the lookup then takes
    # 0.3 s more: past the budget, so the request goes on without the cache
    # at 0.5 s (not 0.8 s, a wait and a whole lookup timeout after it).
    cache = SlowLookups()
    client = client_on(cache, lookup_timeout_s=0.5)
    asked = question("Count from one to five.")
    store = asyncio.create_task(store_of(client, asked, "1 2 3 4 5"))
    asyncio.get_running_loop().call_later(0.3, cache.landing.set)
    began = time.monotonic()
    found = await client.lookup(tenant="acme", model_version="smollm2@1", request=asked)
    assert found.outcome == generation_pb2.CACHE_OUTCOME_BYPASS
    assert time.monotonic() - began < 0.75
    await store


async def test_callers_asking_at_once_while_the_answer_is_stored_all_hit() -> None:
    # A hot question: 16 callers at once (8 of them another user's session,
    # the same question), all waiting on the one store, all answered by it.
    cache = SlowCache()
    client = client_on(cache)
    asked = question("Count from one to five.")
    store = asyncio.create_task(store_of(client, asked, "1 2 3 4 5"))
    callers = [question("Count from one to five.", user=f"user-{i % 2}") for i in range(16)]
    lookups = [asyncio.create_task(client.lookup(tenant="acme", model_version="smollm2@1", request=r)) for r in callers]
    await asyncio.sleep(0.05)
    assert not any(lookup.done() for lookup in lookups)
    cache.landing.set()
    answers = await asyncio.gather(*lookups)
    assert [a.outcome for a in answers] == [HIT] * 16
    assert {a.response.text for a in answers} == {"1 2 3 4 5"}
    await store
    assert not client._in_flight


async def test_the_wait_ends_with_the_request_deadline() -> None:
    from headrace.runtime.request_context import deadline_var

    cache = SlowCache()
    client = client_on(cache, lookup_timeout_s=5.0)
    asked = question("Count from one to five.")
    store = asyncio.create_task(store_of(client, asked, "1 2 3 4 5"))
    token = deadline_var.set(time.monotonic() + 0.1)
    try:
        began = time.monotonic()
        found = await client.lookup(tenant="acme", model_version="smollm2@1", request=asked)
    finally:
        deadline_var.reset(token)
    # Not the 5 s the settings allow: the request had 0.1 s left.
    assert time.monotonic() - began < 1.0
    assert found.outcome == generation_pb2.CACHE_OUTCOME_BYPASS
    cache.landing.set()
    await store
