"""CacheLookups: the router's cache lookups by group commit (a fake stub
stands in for the cache service; tests/integration/cache covers the real one)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from headrace.v1 import cache_pb2, generation_pb2
from services.router.cache_lookups import CacheLookups

HIT = generation_pb2.CACHE_OUTCOME_HIT_EXACT


class FakeCache:
    """Answers each call once `release` is set: a hit whose entry id is the prompt."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], list[float], float | None]] = []
        self.release = asyncio.Event()
        self.release.set()

    @staticmethod
    def hit(lookup: cache_pb2.CacheLookupRequest) -> cache_pb2.CacheLookupResponse:
        return cache_pb2.CacheLookupResponse(outcome=HIT, entry_id=lookup.request.prompt)

    async def LookupMany(
        self, request: cache_pb2.CacheLookupManyRequest, **options: Any
    ) -> cache_pb2.CacheLookupManyResponse:
        prompts = [timed.lookup.request.prompt for timed in request.lookups]
        self.calls.append(("many", prompts, [timed.budget_s for timed in request.lookups], options.get("timeout")))
        await self.release.wait()
        return cache_pb2.CacheLookupManyResponse(results=[self.hit(timed.lookup) for timed in request.lookups])

    async def Lookup(self, request: cache_pb2.CacheLookupRequest, **options: Any) -> cache_pb2.CacheLookupResponse:
        self.calls.append(("one", [request.request.prompt], [], options.get("timeout")))
        await self.release.wait()
        return self.hit(request)


def ask(prompt: str) -> cache_pb2.CacheLookupRequest:
    return cache_pb2.CacheLookupRequest(
        tenant="acme", model_version="m@1", request=generation_pb2.GenerateRequest(prompt=prompt)
    )


async def test_lookups_that_come_while_one_is_in_flight_go_together_with_their_budgets() -> None:
    cache = FakeCache()
    lookups = CacheLookups(cache, max_bytes_per_call=1 << 20)  # type: ignore[arg-type]
    cache.release.clear()
    first = asyncio.ensure_future(lookups.lookup(ask("a"), 5.0))
    await asyncio.sleep(0.01)
    later = [asyncio.ensure_future(lookups.lookup(ask(p), 5.0)) for p in "bc"]
    await asyncio.sleep(0.2)
    cache.release.set()
    answers = await asyncio.gather(first, *later)
    assert [a.entry_id for a in answers] == ["a", "b", "c"]
    (kind, _, _, alone_timeout), (many, prompts, budgets, timeout) = cache.calls
    # The first went alone with its caller's time; the others together,
    # each with what its caller has left when the call went (5 s less 0.2 s).
    assert (kind, many, prompts) == ("one", "many", ["b", "c"])
    assert alone_timeout is not None and 4.9 < alone_timeout <= 5.0
    assert all(4.7 < budget < 4.85 for budget in budgets)
    assert timeout is not None and 4.7 < timeout < 4.95


async def test_a_lookup_whose_caller_gave_up_before_its_call_is_not_sent() -> None:
    cache = FakeCache()
    lookups = CacheLookups(cache, max_bytes_per_call=1 << 20)  # type: ignore[arg-type]
    cache.release.clear()
    first = asyncio.ensure_future(lookups.lookup(ask("a"), 5.0))
    await asyncio.sleep(0.01)
    with pytest.raises(TimeoutError):
        await lookups.lookup(ask("impatient"), 0.05)
    kept = [asyncio.ensure_future(lookups.lookup(ask(p), 5.0)) for p in "bc"]
    await asyncio.sleep(0.01)
    cache.release.set()
    await asyncio.gather(first, *kept)
    assert [(kind, prompts) for kind, prompts, _, _ in cache.calls] == [("one", ["a"]), ("many", ["b", "c"])]
