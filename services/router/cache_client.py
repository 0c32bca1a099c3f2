"""The router's side of the cache: a lookup that never fails or slows a
request (errors and timeouts count as a bypass), and stores that run off
the critical path; both coalesced (cache_lookups.py, cache_stores.py). A
lookup of a question whose answer is being stored waits for that store
(stores_in_flight.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import grpc.aio
from opentelemetry import trace

from headrace.request_rules.cache_policy import bypass_reason
from headrace.request_rules.served_by import cache_header_value
from headrace.runtime.channels import propagated_timeout
from headrace.runtime.config import CacheSettings
from headrace.runtime.log_limits import RepeatLimitedLog
from headrace.v1 import cache_pb2, cache_pb2_grpc, generation_pb2
from services.router import metrics
from services.router.cache_lookups import CacheLookups
from services.router.cache_stores import CacheStores, PendingStore
from services.router.stores_in_flight import StoresInFlight, request_identity

log = logging.getLogger(__name__)
# A cache that is down fails every request alike: counted in metrics,
# logged once per interval.
_FAILURES = RepeatLimitedLog(log)


class CacheClient:
    def __init__(
        self, stub: cache_pb2_grpc.CacheStub | None, settings: CacheSettings, *, max_message_bytes: int
    ) -> None:
        """stub None: caching disabled. max_message_bytes: the channel's
        message bound (stores go together in calls below it)."""
        self._stub = stub if settings.enabled else None
        self._settings = settings
        per_call = max_message_bytes // 2
        self._stores = None if self._stub is None else CacheStores(self._stub, max_bytes_per_call=per_call)
        self._lookups = None if self._stub is None else CacheLookups(self._stub, max_bytes_per_call=per_call)
        self._in_flight = StoresInFlight()

    def asks(self, request: generation_pb2.GenerateRequest) -> bool:
        """Whether lookup() will ask the cache service (else it answers a
        bypass at once)."""
        return self._stub is not None and bypass_reason(request) is None

    async def lookup(
        self, *, tenant: str, model_version: str, request: generation_pb2.GenerateRequest
    ) -> cache_pb2.CacheLookupResponse:
        bypass = cache_pb2.CacheLookupResponse(outcome=generation_pb2.CACHE_OUTCOME_BYPASS)
        if self._lookups is None or not self.asks(request):
            return bypass
        message = cache_pb2.CacheLookupRequest(tenant=tenant, model_version=model_version, request=request)
        # One budget for the wait below and the lookup: a slow cache, its
        # stores included, never holds a request longer than lookup_timeout_s.
        budget_s = propagated_timeout(self._settings.lookup_timeout_s) or 0.0
        try:
            if self._in_flight:
                # Asked again while its answer is on its way to the cache: a
                # short wait for that store beats generating the answer twice.
                waited_from = time.monotonic()
                if not await self._in_flight.settled(request_identity(tenant, request), budget_s):
                    raise TimeoutError
                budget_s = max(0.0, budget_s - (time.monotonic() - waited_from))
            return await self._lookups.lookup(message, budget_s)
        except TimeoutError:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            metrics.CACHE_ERRORS.labels(op="lookup", code=code.name).inc()
            _FAILURES.warning(("lookup", code), "cache lookup failed (%s): answering without the cache", code.name)
            return bypass
        except grpc.aio.AioRpcError as exc:
            metrics.CACHE_ERRORS.labels(op="lookup", code=exc.code().name).inc()
            _FAILURES.warning(
                ("lookup", exc.code()), "cache lookup failed (%s): answering without the cache", exc.code().name
            )
            return bypass
        except Exception as exc:
            # Not the cache's answer (a bug on this side): still never the request's failure.
            metrics.CACHE_ERRORS.labels(op="lookup", code=grpc.StatusCode.INTERNAL.name).inc()
            _FAILURES.warning(("lookup", type(exc)), "cache lookup failed (%r): answering without the cache", exc)
            return bypass

    def store(
        self,
        *,
        tenant: str,
        model_version: str,
        request: generation_pb2.GenerateRequest,
        response: generation_pb2.GenerateResponse,
        deltas: list[cache_pb2.CachedDelta] | None = None,
        started: float | None = None,
    ) -> Coroutine[Any, Any, None]:
        """The store, to run off the request's path. Known from this call on
        (not from when the coroutine first runs), so that the same question
        asked as soon as its stream ends waits for it and hits.
        `deltas`: the answer as it was streamed; `started`: when the
        request arrived (time.monotonic()), so that the cache can refuse an
        answer that an invalidation overtook while it was generated."""
        if self._stores is None or request.cache.no_store:
            return _nothing_to_store()
        identity = request_identity(tenant, request)
        marker = self._in_flight.begin(identity)
        pending = PendingStore(tenant, model_version, request, response, deltas or [], started)
        return self._store(self._stores, pending, identity, marker)

    async def _store(
        self, stores: CacheStores, pending: PendingStore, identity: bytes, marker: asyncio.Future[None]
    ) -> None:
        try:
            await stores.call(pending)
        except grpc.aio.AioRpcError as exc:
            metrics.CACHE_ERRORS.labels(op="store", code=exc.code().name).inc()
            _FAILURES.warning(("store", exc.code()), "cache store failed (%s)", exc.code().name)
        finally:
            self._in_flight.finish(identity, marker)


async def _nothing_to_store() -> None:
    return None


def note_on_trace(route: generation_pb2.RouteInfo) -> None:
    """How the cache took part, as attributes of the request's span."""
    span = trace.get_current_span()
    span.set_attribute("headrace.cache", cache_header_value(route.cache))
    if route.cache_entry_id:
        span.set_attribute("headrace.cache.entry_id", route.cache_entry_id)
        span.set_attribute("headrace.cache.similarity", route.cache_similarity)
    if route.cache_verdict:
        span.set_attribute("headrace.cache.verdict", route.cache_verdict)
