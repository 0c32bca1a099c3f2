"""The Cache servicer: exact-match lookup and store on Redis."""

from __future__ import annotations

import grpc.aio

from headrace.cache_policy import bypass_reason, no_store_reason
from headrace.runtime.config import CacheSettings
from headrace.runtime.errors import InvalidArgument, Unimplemented
from headrace.v1 import cache_pb2, cache_pb2_grpc, generation_pb2
from services.cache import metrics
from services.cache.exact_store import ExactStore
from services.cache.request_key import exact_key


def _require_partition(tenant: str, model_version: str) -> None:
    if not tenant:
        raise InvalidArgument("tenant: required (entries are partitioned by tenant)")
    if not model_version or "@" not in model_version:
        raise InvalidArgument("model_version: required, as name@version")


class CacheServicer(cache_pb2_grpc.CacheServicer):
    def __init__(self, store: ExactStore, settings: CacheSettings) -> None:
        self._store = store
        self._settings = settings

    async def Lookup(
        self, request: cache_pb2.CacheLookupRequest, context: grpc.aio.ServicerContext
    ) -> cache_pb2.CacheLookupResponse:
        _require_partition(request.tenant, request.model_version)
        if bypass_reason(request.request) is not None:
            metrics.LOOKUPS.labels(outcome="bypass").inc()
            return cache_pb2.CacheLookupResponse(outcome=generation_pb2.CACHE_OUTCOME_BYPASS)
        entry_id = exact_key(request.tenant, request.model_version, request.request)
        entry = await self._store.get(entry_id, tenant=request.tenant, model_version=request.model_version)
        max_age = request.request.cache.max_age_s if request.request.cache.HasField("max_age_s") else None
        if entry is None or (max_age is not None and entry.age_s() > max_age):
            metrics.LOOKUPS.labels(outcome="miss").inc()
            return cache_pb2.CacheLookupResponse(outcome=generation_pb2.CACHE_OUTCOME_MISS)
        metrics.LOOKUPS.labels(outcome="hit-exact").inc()
        return cache_pb2.CacheLookupResponse(
            outcome=generation_pb2.CACHE_OUTCOME_HIT_EXACT,
            response=generation_pb2.GenerateResponse.FromString(entry.response),
            similarity=1.0,
            entry_id=entry_id,
            age_s=entry.age_s(),
        )

    async def Store(
        self, request: cache_pb2.CacheStoreRequest, context: grpc.aio.ServicerContext
    ) -> cache_pb2.CacheStoreResponse:
        _require_partition(request.tenant, request.model_version)
        reason = no_store_reason(request.request, request.response)
        if reason is not None:
            return cache_pb2.CacheStoreResponse(stored=False, reason=reason)
        policy = request.request.cache
        ttl = policy.ttl_s if policy.HasField("ttl_s") and policy.ttl_s > 0 else self._settings.default_ttl_s
        ttl = min(ttl, self._settings.max_ttl_s)
        entry_id = exact_key(request.tenant, request.model_version, request.request)
        await self._store.put(
            entry_id,
            tenant=request.tenant,
            model_version=request.model_version,
            response=request.response.SerializeToString(),
            ttl_s=ttl,
            tags=list(request.request.tags),
        )
        metrics.STORES.inc()
        return cache_pb2.CacheStoreResponse(stored=True, entry_id=entry_id)

    async def Invalidate(
        self, request: cache_pb2.InvalidateRequest, context: grpc.aio.ServicerContext
    ) -> cache_pb2.InvalidateResponse:
        raise Unimplemented("cache invalidation is not implemented yet (it comes with the cache-service issue)")
