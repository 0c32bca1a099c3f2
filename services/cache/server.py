"""The Cache servicer: translates protos to the domain (response_cache)
and back, and notes each lookup's outcome on the trace."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import grpc.aio
from opentelemetry import trace
from redis.exceptions import RedisError

from headrace.runtime.errors import InvalidArgument, Unavailable
from headrace.runtime.log_limits import RepeatLimitedLog
from headrace.v1 import cache_pb2, cache_pb2_grpc, generation_pb2
from services.cache import metrics
from services.cache.entry_store import InvalidateCriteria
from services.cache.partition import MAX_ID_CHARS, partition_of, require_tenant
from services.cache.response_cache import LookupResult, Outcome, ResponseCache

_OUTCOMES = {
    Outcome.BYPASS: generation_pb2.CACHE_OUTCOME_BYPASS,
    Outcome.MISS: generation_pb2.CACHE_OUTCOME_MISS,
    Outcome.HIT_EXACT: generation_pb2.CACHE_OUTCOME_HIT_EXACT,
    Outcome.HIT_SEMANTIC: generation_pb2.CACHE_OUTCOME_HIT_SEMANTIC,
}
log = logging.getLogger(__name__)
MAX_INVALIDATE_IDS = 1024
MAX_INVALIDATE_TAGS = 256
MAX_STORES_PER_CALL = 256
MAX_LOOKUPS_PER_CALL = 256
Done = TypeVar("Done")
Reply = TypeVar("Reply")


def _budget(budget_s: float, call_remaining: float | None) -> float | None:
    """A lookup's own budget, within what is left of the call's deadline.
    0 (or infinite): no bound of its own; negative or NaN: already spent."""
    own: float | None
    if budget_s == 0 or budget_s == math.inf:
        own = None
    elif budget_s > 0:
        own = budget_s
    else:
        own = 0.0
    bounds = [b for b in (own, call_remaining) if b is not None]
    return min(bounds) if bounds else None


async def _side_by_side(
    calls: list[Coroutine[Any, Any, Done]],
    *,
    answered: Callable[[Done], Reply],
    invalid: Callable[[InvalidArgument], Reply],
) -> list[Reply]:
    """The items of a Many call, run side by side as separate calls would
    run; every one finishes before the call answers (none left writing
    after a failure). An invalid item is answered alone (`invalid`); any
    other failure is the call's (Redis down: UNAVAILABLE; else INTERNAL)."""
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    replies: list[Reply] = []
    for outcome in outcomes:
        if isinstance(outcome, InvalidArgument):
            replies.append(invalid(outcome))
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            replies.append(answered(outcome))
    return replies


def _reply(result: LookupResult) -> cache_pb2.CacheLookupResponse:
    if result.entry is None:
        return cache_pb2.CacheLookupResponse(outcome=_OUTCOMES[result.outcome])
    reply = cache_pb2.CacheLookupResponse.FromString(result.entry.answer)
    reply.outcome = _OUTCOMES[result.outcome]
    reply.similarity = result.similarity
    reply.entry_id = result.entry.entry_id
    reply.age_s = result.entry.age_s()
    if result.outcome is Outcome.HIT_SEMANTIC:
        reply.verdict = f"{result.verifier}:{result.verdict}"
    return reply


def _note_on_trace(result: LookupResult) -> None:
    span = trace.get_current_span()
    span.set_attribute("headrace.cache.outcome", result.outcome.value)
    if result.reason:
        span.set_attribute("headrace.cache.reason", result.reason)
    if result.best_similarity:
        span.set_attribute("headrace.cache.best_similarity", result.best_similarity)
    if result.entry is not None:
        span.set_attribute("headrace.cache.entry_id", result.entry.entry_id)
        span.set_attribute("headrace.cache.similarity", result.similarity)
    if result.verdict:
        # On a semantic hit the verdict that let it through; on a miss the
        # first candidate the verifier turned down, and why.
        span.set_attribute("headrace.cache.verifier", result.verifier)
        span.set_attribute("headrace.cache.verdict", result.verdict)
        if result.verdict_detail:
            span.set_attribute("headrace.cache.verdict_detail", result.verdict_detail)


def criteria_from(request: cache_pb2.InvalidateRequest) -> InvalidateCriteria:
    require_tenant(request.tenant)
    if request.model_version:
        partition_of(request.tenant, request.model_version)
        if request.model and request.model_version.split("@", 1)[0] != request.model:
            raise InvalidArgument(
                f"model_version: {request.model_version!r} is not a version of model {request.model!r}"
            )
    if len(request.model) > MAX_ID_CHARS or "@" in request.model:
        raise InvalidArgument("model: a model name without '@' (use model_version for one version)")
    if len(request.entry_ids) > MAX_INVALIDATE_IDS:
        raise InvalidArgument(f"entry_ids: at most {MAX_INVALIDATE_IDS}")
    if len(request.tags) > MAX_INVALIDATE_TAGS:
        raise InvalidArgument(f"tags: at most {MAX_INVALIDATE_TAGS}")
    for entry_id in request.entry_ids:
        if len(entry_id) != 64 or any(c not in "0123456789abcdef" for c in entry_id):
            raise InvalidArgument(f"entry_ids: {entry_id[:80]!r} is not an entry id (64 lowercase hex characters)")
    return InvalidateCriteria(
        tenant=request.tenant,
        model=request.model,
        model_version=request.model_version,
        tags=tuple(request.tags),
        entry_ids=tuple(request.entry_ids),
    )


# Redis down fails every call the same way: one log line per interval.
_OUTAGES = RepeatLimitedLog(log, interval_s=30.0)


@contextlib.contextmanager
def redis_outage_as_unavailable(method: str) -> Iterator[None]:
    """Redis unreachable: UNAVAILABLE with a short Retry-After (the router
    answers from the engine meanwhile), logged without a traceback per call."""
    try:
        yield
    except RedisError as exc:
        _OUTAGES.warning(type(exc).__name__, "cache store (Redis) unavailable in %s: %s", method, exc)
        raise Unavailable(f"the cache's store is unavailable ({type(exc).__name__})", retry_after_s=1) from None


class CacheServicer(cache_pb2_grpc.CacheServicer):
    def __init__(self, cache: ResponseCache, *, reply_margin_s: float = 0.03) -> None:
        self._cache = cache
        self._reply_margin_s = reply_margin_s

    async def Lookup(
        self, request: cache_pb2.CacheLookupRequest, context: grpc.aio.ServicerContext
    ) -> cache_pb2.CacheLookupResponse:
        with redis_outage_as_unavailable("Lookup"):
            result = await self._lookup(request, context.time_remaining())
        _note_on_trace(result)
        return _reply(result)

    async def LookupMany(
        self, request: cache_pb2.CacheLookupManyRequest, context: grpc.aio.ServicerContext
    ) -> cache_pb2.CacheLookupManyResponse:
        if len(request.lookups) > MAX_LOOKUPS_PER_CALL:
            raise InvalidArgument(f"lookups: at most {MAX_LOOKUPS_PER_CALL} per call, got {len(request.lookups)}")
        call_remaining = context.time_remaining()
        with redis_outage_as_unavailable("LookupMany"):
            # Concurrent semantic lookups are embedded together. An invalid
            # lookup is a bypass: the router answers it from the engine.
            results = await _side_by_side(
                [self._lookup(timed.lookup, _budget(timed.budget_s, call_remaining)) for timed in request.lookups],
                answered=_reply,
                invalid=lambda _: cache_pb2.CacheLookupResponse(outcome=generation_pb2.CACHE_OUTCOME_BYPASS),
            )
        return cache_pb2.CacheLookupManyResponse(results=results)

    async def _lookup(self, request: cache_pb2.CacheLookupRequest, remaining: float | None) -> LookupResult:
        """`remaining`: how long the caller still waits (None: no bound)."""
        started = time.perf_counter()
        partition = partition_of(request.tenant, request.model_version)
        if remaining is None:
            result = await self._cache.lookup(partition, request.request)
        else:
            # Answer before the caller gives up: a miss in time is better
            # than a DEADLINE_EXCEEDED after the whole wait.
            budget_s = remaining - self._reply_margin_s
            try:
                if budget_s <= 0:
                    raise TimeoutError
                # A timeout scope, not wait_for: no task of its own per lookup.
                async with asyncio.timeout(budget_s):
                    result = await self._cache.lookup(partition, request.request, deadline_s=budget_s)
            except TimeoutError:
                metrics.SEMANTIC_SKIPPED.labels(reason="deadline").inc()
                result = LookupResult(Outcome.MISS, reason="deadline")
        metrics.LOOKUPS.labels(outcome=result.outcome.value).inc()
        metrics.LOOKUP_SECONDS.labels(outcome=result.outcome.value).observe(time.perf_counter() - started)
        return result

    async def Store(
        self, request: cache_pb2.CacheStoreRequest, context: grpc.aio.ServicerContext
    ) -> cache_pb2.CacheStoreResponse:
        with redis_outage_as_unavailable("Store"):
            return await self._store(request)

    async def StoreMany(
        self, request: cache_pb2.CacheStoreManyRequest, context: grpc.aio.ServicerContext
    ) -> cache_pb2.CacheStoreManyResponse:
        if len(request.stores) > MAX_STORES_PER_CALL:
            raise InvalidArgument(f"stores: at most {MAX_STORES_PER_CALL} per call, got {len(request.stores)}")
        with redis_outage_as_unavailable("StoreMany"):
            # An invalid store is refused alone: the others are stored all the same.
            results = await _side_by_side(
                [self._store(store) for store in request.stores],
                answered=lambda response: response,
                invalid=lambda error: cache_pb2.CacheStoreResponse(stored=False, reason=f"invalid: {error}"),
            )
        return cache_pb2.CacheStoreManyResponse(results=results)

    async def _store(self, request: cache_pb2.CacheStoreRequest) -> cache_pb2.CacheStoreResponse:
        partition = partition_of(request.tenant, request.model_version)
        # What a hit replies with, less what each hit fills in.
        answer = cache_pb2.CacheLookupResponse(response=request.response, deltas=request.deltas)
        result = await self._cache.store(
            partition,
            request.request,
            request.response,
            answer=answer.SerializeToString(),
            request_age_s=request.request_age_s,
        )
        return cache_pb2.CacheStoreResponse(
            stored=result.stored, entry_id=result.entry_id, reason=result.reason, semantic=result.semantic
        )

    async def Invalidate(
        self, request: cache_pb2.InvalidateRequest, context: grpc.aio.ServicerContext
    ) -> cache_pb2.InvalidateResponse:
        criteria = criteria_from(request)
        with redis_outage_as_unavailable("Invalidate"):
            removed = await self._cache.invalidate(criteria)
        return cache_pb2.InvalidateResponse(removed=removed)
