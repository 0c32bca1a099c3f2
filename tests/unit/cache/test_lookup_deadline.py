"""The servicer answers miss before the caller's deadline instead of
letting a slow lookup run past it (a stand-in cache and context: what is
tested is the servicer's use of the deadline)."""

import asyncio
from typing import Any, cast

import grpc.aio
import pytest

from headrace.v1 import cache_pb2, generation_pb2
from services.cache.response_cache import LookupResult, Outcome, ResponseCache
from services.cache.server import CacheServicer


class SlowCache:
    def __init__(self) -> None:
        self.cancelled = False
        self.deadlines: list[float | None] = []

    async def lookup(self, partition: object, request: object, *, deadline_s: float | None = None) -> LookupResult:
        self.deadlines.append(deadline_s)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return LookupResult(Outcome.HIT_EXACT)


class Context:
    def __init__(self, remaining: float | None) -> None:
        self._remaining = remaining

    def time_remaining(self) -> float | None:
        return self._remaining


def servicer(cache: SlowCache) -> CacheServicer:
    return CacheServicer(cast(ResponseCache, cache), reply_margin_s=0.03)


REQUEST = cache_pb2.CacheLookupRequest(
    tenant="t", model_version="m@1", request=generation_pb2.GenerateRequest(prompt="hi")
)


async def test_a_lookup_that_would_outlive_the_deadline_answers_miss_in_time() -> None:
    cache = SlowCache()
    context = cast(grpc.aio.ServicerContext[Any, Any], Context(0.08))
    reply = await servicer(cache).Lookup(REQUEST, context)
    assert reply.outcome == generation_pb2.CACHE_OUTCOME_MISS
    assert cache.cancelled
    # The lookup was told what it had: the deadline less the reply margin.
    assert cache.deadlines == [pytest.approx(0.05)]


async def test_no_time_left_is_a_miss_without_looking() -> None:
    cache = SlowCache()
    context = cast(grpc.aio.ServicerContext[Any, Any], Context(0.01))
    reply = await servicer(cache).Lookup(REQUEST, context)
    assert reply.outcome == generation_pb2.CACHE_OUTCOME_MISS and cache.deadlines == []
