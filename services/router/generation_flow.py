"""One online request, from the router's side:

    routing decision (services/router/routing) -> cache lookup and
    scheduler.Place at once -> worker.Generate (streamed straight from the
    worker; services/router/worker_attempts.py) -> release the lease, store
    the answer in the cache, report the outcome to the routing layer (all
    off the critical path).

The cache lookup and the first placement run concurrently: on a miss the
lease is there when the lookup answers (one hop less before the first
token); on a hit the lease goes back at once, or the placement stops
waiting in the scheduler's queue, and the hit is served even when the
placement was refused (queue full, no worker).

The routing layer decides the model version, and which attempt comes
next when one fails before its first token (another worker, a fallback
model; within a retry budget, past open circuits). After the first token
the error reaches the client as its status. A cascade decision answers
with the fast model first and escalates when that answer fails its check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

import grpc

from headrace.runtime.background import BackgroundTasks
from headrace.runtime.errors import HeadraceError, Internal, Unavailable, status_code_for
from headrace.v1 import cache_pb2, generation_pb2
from services.router import metrics
from services.router.cache_client import CacheClient, note_on_trace
from services.router.cached_stream import cached_stream, deltas_of
from services.router.routing import metrics as routing_metrics
from services.router.routing.decision import CascadePlan, RequestOutcome, RouteDecision
from services.router.routing.layer import RoutingLayer
from services.router.worker_attempts import RequestMeta, WorkerAttempts
from services.router.workers import Workers

log = logging.getLogger(__name__)

_HITS = (generation_pb2.CACHE_OUTCOME_HIT_EXACT, generation_pb2.CACHE_OUTCOME_HIT_SEMANTIC)


@dataclass
class _Answer:
    """The chunks a client was sent, put together: for the cache and the unary reply."""

    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    # Token ids per delta, to keep the answer's deltas in the cache.
    token_counts: list[int] = field(default_factory=list)
    # From the first chunk.
    route: generation_pb2.RouteInfo = field(default_factory=generation_pb2.RouteInfo)
    model: str = ""
    # The chunk with the finish reason.
    last: generation_pb2.GenerateStreamResponse | None = None

    def add(self, chunk: generation_pb2.GenerateStreamResponse) -> None:
        if not self.token_counts:
            self.route = chunk.route
            self.model = chunk.model
        self.text.append(chunk.text)
        self.token_ids.extend(chunk.token_ids)
        self.token_counts.append(len(chunk.token_ids))
        if chunk.finish_reason:
            self.last = chunk

    def response(self, request_id: str) -> generation_pb2.GenerateResponse:
        last = self.last or generation_pb2.GenerateStreamResponse()
        return generation_pb2.GenerateResponse(
            request_id=request_id,
            model=self.model,
            text="".join(self.text),
            token_ids=self.token_ids,
            finish_reason=last.finish_reason,
            usage=last.usage,
            route=self.route,
            timing=last.timing,
            cost=last.cost,
        )


class GenerationFlow:
    def __init__(
        self,
        *,
        routing: RoutingLayer,
        workers: Workers,
        cache: CacheClient,
        background: BackgroundTasks,
    ) -> None:
        self._routing = routing
        self._workers = workers
        self._cache = cache
        self._background = background

    async def stream(
        self, request: generation_pb2.GenerateRequest, *, tenant: str, request_id: str, whole_answer: bool = False
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        """Deltas of the answer; the first carries model and route, the last
        finish reason, usage, timing and cost. whole_answer: the worker sends
        the answer as one message (it may ask its backend in one unary call)."""
        meta = RequestMeta(tenant=tenant, request_id=request_id, started=time.monotonic(), whole_answer=whole_answer)
        decision = await self._routing.decide(request, tenant=tenant, request_id=request_id)
        route = _route_info(decision)
        # A cascade asks the fast model first, perhaps on a smaller budget.
        first_request, budget_cut = (
            (request, False) if decision.cascade is None else _fast_request(request, decision.cascade)
        )
        first = WorkerAttempts(self._workers, self._routing.plan(decision), first_request, meta)
        answer = _Answer()
        try:
            lookup = await self._look_up(request, decision, first, tenant)
            route.cache = lookup.outcome or generation_pb2.CACHE_OUTCOME_MISS
            if lookup.outcome in _HITS:
                route.cache_similarity = lookup.similarity
                route.cache_entry_id = lookup.entry_id
                route.cache_verdict = lookup.verdict
                note_on_trace(route)
                # Counted here, for the gRPC and HTTP APIs alike.
                metrics.count_answer(tenant, route.model_version, route.cache)
                for chunk in cached_stream(lookup, route, request_id, meta.started):
                    yield chunk
                return
            note_on_trace(route)
            if decision.cascade is not None:
                chunks = self._cascade(first, budget_cut, decision, route, request, meta)
            else:
                chunks = self._reported(first, decision, route, meta)
            # Closed with this stream (its worker call cancelled now, not
            # whenever the garbage collector gets to it).
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    if not answer.token_counts:
                        # An answer is served once its first delta is: count it then.
                        metrics.count_answer(tenant, chunk.route.model_version, route.cache)
                    answer.add(chunk)
                    yield chunk
        finally:
            # A placement made ahead and never streamed goes back.
            first.abandon()
        if answer.last is not None and route.cache != generation_pb2.CACHE_OUTCOME_BYPASS:
            # Stored under the version that answered (a fallback or an
            # escalation may differ from the one looked up).
            self._background.spawn(
                self._cache.store(
                    tenant=tenant,
                    model_version=answer.route.model_version,
                    request=request,
                    response=answer.response(request_id),
                    deltas=deltas_of(answer.text, answer.token_ids, answer.token_counts),
                    started=meta.started,
                ),
                name=f"cache-store:{request_id}",
            )

    async def complete(
        self, request: generation_pb2.GenerateRequest, *, tenant: str, request_id: str
    ) -> generation_pb2.GenerateResponse:
        answer = _Answer()
        # The caller wants the whole answer: so does the router of the worker.
        async for chunk in self.stream(request, tenant=tenant, request_id=request_id, whole_answer=True):
            answer.add(chunk)
        return answer.response(request_id)

    async def _look_up(
        self,
        request: generation_pb2.GenerateRequest,
        decision: RouteDecision,
        first: WorkerAttempts,
        tenant: str,
    ) -> cache_pb2.CacheLookupResponse:
        """The cache's answer, with the first placement made meanwhile; a hit
        gives that placement back at once."""
        if self._cache.asks(request):
            first.place_ahead()
        lookup = await self._cache.lookup(tenant=tenant, model_version=decision.primary.model_version, request=request)
        if lookup.outcome in _HITS:
            first.abandon()
        return lookup

    async def _reported(
        self,
        attempts: WorkerAttempts,
        decision: RouteDecision,
        route: generation_pb2.RouteInfo,
        meta: RequestMeta,
    ) -> AsyncGenerator[generation_pb2.GenerateStreamResponse, None]:
        """The attempts' chunks; how they went goes back to the routing layer
        however the request ends."""
        error = ""
        try:
            async for chunk in attempts.stream(route):
                yield chunk
        except HeadraceError as exc:
            error = status_code_for(exc).name
            raise
        except (asyncio.CancelledError, GeneratorExit):
            error = grpc.StatusCode.CANCELLED.name
            raise
        finally:
            served = attempts.served
            self._routing.report(
                decision,
                RequestOutcome(
                    attempts=attempts.outcomes,
                    error=error if served is None else "",
                    ttft_s=attempts.ttft_s,
                    total_s=time.monotonic() - meta.started,
                    completion_tokens=served.last.usage.completion_tokens if served is not None else 0,
                    cost_usd=served.last.cost.usd if served is not None else 0.0,
                ),
            )

    async def _cascade(
        self,
        fast: WorkerAttempts,
        budget_cut: bool,
        decision: RouteDecision,
        route: generation_pb2.RouteInfo,
        request: generation_pb2.GenerateRequest,
        meta: RequestMeta,
    ) -> AsyncGenerator[generation_pb2.GenerateStreamResponse, None]:
        """The fast answer is held back until it passed its check; if it
        fails, the accurate model answers, and the final cost includes both.
        budget_cut: the fast attempt ran on the cascade's smaller budget."""
        assert decision.cascade is not None
        cascade = decision.cascade
        held: list[generation_pb2.GenerateStreamResponse] = []
        why: str | None
        try:
            async for chunk in self._reported(fast, decision, route, meta):
                held.append(chunk)
            served = fast.served
            why = (
                "no answer"
                if served is None
                else cascade.check.failure(
                    "".join(chunk.text for chunk in held),
                    truncated=budget_cut and served.last.finish_reason == generation_pb2.FINISH_REASON_LENGTH,
                )
            )
        except HeadraceError as exc:
            if not isinstance(exc, (Unavailable, Internal)):
                raise
            why = f"fast attempt failed ({type(exc).__name__})"
        if why is None:
            routing_metrics.CASCADE.labels(route=cascade.route, outcome="kept").inc()
            for chunk in held:
                yield chunk
            return
        routing_metrics.CASCADE.labels(route=cascade.route, outcome="escalated").inc()
        served = fast.served
        fast_version = served.route.model_version if served is not None else decision.primary.model_version
        log.info("cascade %s: fast answer from %s escalated: %s", cascade.route, fast_version, why)
        spent_usd = served.last.cost.usd if served is not None else 0.0
        spent_s = served.last.cost.engine_seconds if served is not None else 0.0
        escalated = await self._routing.escalate(decision, why)
        escalated_route = _route_info(escalated)
        escalated_route.cache = route.cache
        accurate = WorkerAttempts(self._workers, self._routing.plan(escalated), request, meta)
        async for chunk in self._reported(accurate, escalated, escalated_route, meta):
            if chunk.finish_reason:
                # The client pays for the fast attempt too.
                chunk.cost.usd += spent_usd
                chunk.cost.engine_seconds += spent_s
            yield chunk


def _fast_request(
    request: generation_pb2.GenerateRequest, cascade: CascadePlan
) -> tuple[generation_pb2.GenerateRequest, bool]:
    """The fast attempt's request, and whether its budget is the cascade's
    own (smaller) one."""
    asked = request.sampling.max_tokens if request.sampling.HasField("max_tokens") else 0
    # A cut-off answer counts against the fast model only when the cut was
    # the cascade's smaller budget: at the client's own budget the
    # accurate model would be cut off just the same.
    budget_cut = bool(cascade.fast_max_tokens) and (not asked or cascade.fast_max_tokens < asked)
    if not budget_cut:
        return request, False
    fast_request = generation_pb2.GenerateRequest()
    fast_request.CopyFrom(request)
    fast_request.sampling.max_tokens = cascade.fast_max_tokens
    return fast_request, True


def _route_info(decision: RouteDecision) -> generation_pb2.RouteInfo:
    return generation_pb2.RouteInfo(
        model_version=decision.primary.model_version,
        reason=decision.reason,
        deprecation=decision.primary.deprecation,
    )
