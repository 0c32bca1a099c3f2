"""One online request, from the router's side:

    routing decision (services/router/routing) -> cache lookup ->
    scheduler.Place -> worker.Generate (streamed straight from the worker)
    -> release the lease, store the answer in the cache, report the outcome
    to the routing layer (all off the critical path).

The routing layer decides the model version, and which attempt comes
next when one fails before its first token (another worker, a fallback
model; within a retry budget, past open circuits). After the first token
the error reaches the client as its status. A cascade decision answers
with the fast model first and escalates when that answer fails its check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import grpc.aio

from headrace.models.registry import Resolution
from headrace.request_rules.prefix_hashing import request_prefix_hashes
from headrace.runtime.background import BackgroundTasks
from headrace.runtime.channels import ChannelPool, call_options
from headrace.runtime.errors import HeadraceError, Internal, Unavailable, from_rpc_error, status_code_for
from headrace.v1 import generation_pb2, scheduler_pb2, worker_pb2, worker_pb2_grpc
from services.router import metrics
from services.router.cache_client import CacheClient, note_on_trace
from services.router.cached_stream import cached_stream, deltas_of
from services.router.leasing import Leasing
from services.router.routing import metrics as routing_metrics
from services.router.routing.attempts import AttemptPlan
from services.router.routing.decision import RequestOutcome, RouteDecision
from services.router.routing.layer import RoutingLayer

log = logging.getLogger(__name__)


@dataclass
class _Answer:
    """What the stream produced, for the cache and the unary reply."""

    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    # Token ids per delta, to keep the answer's deltas in the cache.
    token_counts: list[int] = field(default_factory=list)
    last: generation_pb2.GenerateStreamResponse | None = None
    # From the request's start to the first token.
    ttft_s: float | None = None


def estimate_prompt_tokens(request: generation_pb2.GenerateRequest) -> int:
    chars = len(request.prompt) + sum(len(m.content) for m in request.messages)
    # ~4 characters per token for English text; only a placement hint.
    return max(1, chars // 4)


class GenerationFlow:
    def __init__(
        self,
        *,
        routing: RoutingLayer,
        leasing: Leasing,
        cache: CacheClient,
        workers: ChannelPool,
        background: BackgroundTasks,
    ) -> None:
        self._routing = routing
        self._leasing = leasing
        self._cache = cache
        self._workers = workers
        self._background = background

    async def stream(
        self, request: generation_pb2.GenerateRequest, *, tenant: str, request_id: str, whole_answer: bool = False
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        """Deltas of the answer; the first carries model and route, the last
        finish reason, usage, timing and cost. whole_answer: the worker sends
        the answer as one message (it may ask its backend in one unary call)."""
        started = time.monotonic()
        decision = await self._routing.decide(request, tenant=tenant, request_id=request_id)
        route = _route_info(decision)
        lookup = await self._cache.lookup(tenant=tenant, model_version=decision.primary.model_version, request=request)
        route.cache = lookup.outcome or generation_pb2.CACHE_OUTCOME_MISS
        if lookup.outcome in (generation_pb2.CACHE_OUTCOME_HIT_EXACT, generation_pb2.CACHE_OUTCOME_HIT_SEMANTIC):
            route.cache_similarity = lookup.similarity
            route.cache_entry_id = lookup.entry_id
            route.cache_verdict = lookup.verdict
            note_on_trace(route)
            # Counted here, for the gRPC and HTTP APIs alike.
            metrics.count_answer(tenant, route.model_version, route.cache)
            for chunk in cached_stream(lookup, route, request_id, started):
                yield chunk
            return
        note_on_trace(route)
        answer = _Answer()
        if decision.cascade is not None:
            chunks = self._generate_cascade(request, decision, route, tenant, request_id, started, answer, whole_answer)
        else:
            chunks = self._generate_routed(request, decision, route, tenant, request_id, started, answer, whole_answer)
        counted = False
        async for chunk in chunks:
            if not counted:
                # An answer is served once its first delta is: count it then.
                counted = True
                metrics.count_answer(tenant, route.model_version, route.cache)
            yield chunk
        if answer.last is not None and route.cache != generation_pb2.CACHE_OUTCOME_BYPASS:
            # Stored under the version that answered (a fallback or an
            # escalation may differ from the one looked up).
            self._background.spawn(
                self._cache.store(
                    tenant=tenant,
                    model_version=route.model_version,
                    request=request,
                    response=self._to_response(answer, route, request_id, route.model_version),
                    deltas=deltas_of(answer.text, answer.token_ids, answer.token_counts),
                    started=started,
                ),
                name=f"cache-store:{request_id}",
            )

    async def complete(
        self, request: generation_pb2.GenerateRequest, *, tenant: str, request_id: str
    ) -> generation_pb2.GenerateResponse:
        answer = _Answer()
        route = generation_pb2.RouteInfo()
        model = ""
        # The caller wants the whole answer: so does the router of the worker.
        async for chunk in self.stream(request, tenant=tenant, request_id=request_id, whole_answer=True):
            if chunk.HasField("route"):
                route = chunk.route
                model = chunk.model
            answer.text.append(chunk.text)
            answer.token_ids.extend(chunk.token_ids)
            answer.last = chunk
        return self._to_response(answer, route, request_id, model)

    @staticmethod
    def _to_response(
        answer: _Answer, route: generation_pb2.RouteInfo, request_id: str, model: str
    ) -> generation_pb2.GenerateResponse:
        last = answer.last or generation_pb2.GenerateStreamResponse()
        return generation_pb2.GenerateResponse(
            request_id=request_id,
            model=model,
            text="".join(answer.text),
            token_ids=answer.token_ids,
            finish_reason=last.finish_reason,
            usage=last.usage,
            route=route,
            timing=last.timing,
            cost=last.cost,
        )

    async def _generate_cascade(
        self,
        request: generation_pb2.GenerateRequest,
        decision: RouteDecision,
        route: generation_pb2.RouteInfo,
        tenant: str,
        request_id: str,
        started: float,
        answer: _Answer,
        whole_answer: bool,
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        """The fast answer is held back until it passed its check; if it
        fails, the accurate model answers, and the final cost includes both."""
        assert decision.cascade is not None
        cascade = decision.cascade
        fast_request = request
        asked = request.sampling.max_tokens if request.sampling.HasField("max_tokens") else 0
        # A cut-off answer counts against the fast model only when the cut was
        # the cascade's smaller budget: at the client's own budget the
        # accurate model would be cut off just the same.
        budget_cut = bool(cascade.fast_max_tokens) and (not asked or cascade.fast_max_tokens < asked)
        if budget_cut:
            fast_request = generation_pb2.GenerateRequest()
            fast_request.CopyFrom(request)
            fast_request.sampling.max_tokens = cascade.fast_max_tokens
        fast = _Answer()
        held: list[generation_pb2.GenerateStreamResponse] = []
        why: str | None
        try:
            async for chunk in self._generate_routed(
                fast_request, decision, route, tenant, request_id, started, fast, whole_answer
            ):
                held.append(chunk)
            last = fast.last
            why = (
                "no answer"
                if last is None
                else cascade.check.failure(
                    "".join(fast.text),
                    truncated=budget_cut and last.finish_reason == generation_pb2.FINISH_REASON_LENGTH,
                )
            )
        except HeadraceError as exc:
            if not isinstance(exc, (Unavailable, Internal)):
                raise
            why = f"fast attempt failed ({type(exc).__name__})"
        if why is None:
            routing_metrics.CASCADE.labels(route=cascade.route, outcome="kept").inc()
            answer.text, answer.token_ids, answer.last = fast.text, fast.token_ids, fast.last
            answer.token_counts = fast.token_counts
            for chunk in held:
                yield chunk
            return
        routing_metrics.CASCADE.labels(route=cascade.route, outcome="escalated").inc()
        log.info("cascade %s: fast answer from %s escalated: %s", cascade.route, route.model_version, why)
        spent_usd = fast.last.cost.usd if fast.last is not None else 0.0
        spent_s = fast.last.cost.engine_seconds if fast.last is not None else 0.0
        escalated = await self._routing.escalate(decision, why)
        escalated_route = _route_info(escalated)
        escalated_route.cache = route.cache
        async for chunk in self._generate_routed(
            request, escalated, escalated_route, tenant, request_id, started, answer, whole_answer
        ):
            if chunk.finish_reason:
                # The client pays for the fast attempt too.
                chunk.cost.usd += spent_usd
                chunk.cost.engine_seconds += spent_s
            yield chunk
        route.CopyFrom(escalated_route)

    async def _generate_routed(
        self,
        request: generation_pb2.GenerateRequest,
        decision: RouteDecision,
        route: generation_pb2.RouteInfo,
        tenant: str,
        request_id: str,
        started: float,
        answer: _Answer,
        whole_answer: bool,
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        """Attempts as the routing layer plans them, until one streams; the
        outcome goes back to the routing layer however the request ends."""
        plan = self._routing.plan(decision)
        error = ""
        try:
            async for chunk in self._attempts(plan, request, route, tenant, request_id, started, answer, whole_answer):
                yield chunk
        except HeadraceError as exc:
            error = status_code_for(exc).name
            raise
        except (asyncio.CancelledError, GeneratorExit):
            error = grpc.StatusCode.CANCELLED.name
            raise
        finally:
            plan.close()
            last = answer.last
            self._routing.report(
                decision,
                RequestOutcome(
                    attempts=plan.attempts,
                    error=error if last is None else "",
                    ttft_s=answer.ttft_s,
                    total_s=time.monotonic() - started,
                    completion_tokens=last.usage.completion_tokens if last is not None else 0,
                    cost_usd=last.cost.usd if last is not None else 0.0,
                ),
            )

    async def _attempts(
        self,
        plan: AttemptPlan,
        request: generation_pb2.GenerateRequest,
        route: generation_pb2.RouteInfo,
        tenant: str,
        request_id: str,
        started: float,
        answer: _Answer,
        whole_answer: bool,
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        max_tokens = request.sampling.max_tokens if request.sampling.HasField("max_tokens") else 0
        while True:
            attempt = await plan.next()
            resolution = attempt.resolution
            try:
                placed = await self._leasing.place(
                    scheduler_pb2.PlaceRequest(
                        request_id=request_id,
                        model_version=resolution.model_version,
                        tenant=tenant,
                        priority=request.priority,
                        session_id=request.session_id,
                        # For the scheduler's prefix affinity (headrace/request_rules/prefix_hashing.py);
                        # per attempt, since a fallback is another model version.
                        prefix_hashes=request_prefix_hashes(request, resolution.model_version),
                        prompt_tokens=estimate_prompt_tokens(request),
                        max_tokens=max_tokens,
                        exclude_workers=attempt.exclude_workers,
                    )
                )
            except grpc.aio.AioRpcError as exc:
                placement_error = from_rpc_error(exc)
                if plan.placement_failed(attempt, placement_error):
                    continue
                raise placement_error from exc
            plan.placed(attempt, placed.lease.worker_id)
            route.model_version = resolution.model_version
            route.reason = attempt.reason
            route.deprecation = resolution.deprecation
            route.worker_id = placed.lease.worker_id
            route.attempts = attempt.number
            async with self._leasing.hold(placed.lease) as use:
                call = worker_pb2_grpc.WorkerStub(self._workers.get(placed.lease.endpoint)).Generate(
                    worker_pb2.WorkerGenerateRequest(
                        request_id=request_id,
                        model_version=resolution.model_version,
                        request=request,
                        lease_id=placed.lease.lease_id,
                        tenant=tenant,
                        priority=request.priority,
                        whole_answer=whole_answer,
                    ),
                    **call_options(),
                )
                first = True
                ttft_s = 0.0
                # None: no first-token time (a whole answer its engine gave in one piece).
                attempt_ttft_s: float | None = None
                try:
                    async for chunk in call:
                        if first:
                            first = False
                            chunk.route.CopyFrom(route)
                            chunk.model = resolution.model_version
                            now = time.monotonic()
                            ttft_s = now - started
                            held_back_s = _held_back_s(chunk) if whole_answer else 0.0
                            if held_back_s is not None:
                                # A whole answer's one message comes at its end: the worker says
                                # how long it held its tokens after the first (None: it cannot).
                                ttft_s -= held_back_s
                                attempt_ttft_s = now - attempt.started - held_back_s
                                answer.ttft_s = use.ttft_s = ttft_s
                                metrics.TTFT.labels(model=resolution.model_version).observe(ttft_s)
                        answer.text.append(chunk.text)
                        answer.token_ids.extend(chunk.token_ids)
                        answer.token_counts.append(len(chunk.token_ids))
                        if chunk.finish_reason:
                            chunk.timing.ttft_ms = ttft_s * 1000.0
                            self._finish(chunk, resolution, placed, started, tenant)
                            answer.last = chunk
                            use.usage = chunk.usage
                        yield chunk
                    use.outcome = scheduler_pb2.LEASE_OUTCOME_OK
                    last = answer.last
                    plan.succeeded(
                        attempt,
                        ttft_s=attempt_ttft_s,
                        total_s=time.monotonic() - attempt.started,
                        completion_tokens=last.usage.completion_tokens if last is not None else 0,
                        cost_usd=last.cost.usd if last is not None else 0.0,
                    )
                    return
                except grpc.aio.AioRpcError as exc:
                    error = from_rpc_error(exc)
                    if plan.worker_failed(attempt, error, after_first_token=not first):
                        continue
                    if not first:
                        # Tokens already reached the client: say plainly where it broke.
                        raise type(error)(
                            f"generation failed after the first token on {resolution.model_version} "
                            f"(worker {placed.lease.worker_id}): {error.message}",
                            retry_after_s=error.retry_after_s,
                        ) from exc
                    raise error from exc
                finally:
                    # Also on cancel and on an early close by the consumer:
                    # the worker sees the cancel and aborts the sequence.
                    call.cancel()

    def _finish(
        self,
        chunk: generation_pb2.GenerateStreamResponse,
        resolution: Resolution,
        placed: scheduler_pb2.PlaceResponse,
        started: float,
        tenant: str,
    ) -> None:
        """Fill in timing and cost on the last chunk, and count them."""
        engine_seconds = chunk.cost.engine_seconds
        # The version's own price, unless another of its pools served it.
        price = placed.price_per_hour if placed.pool and placed.pool != resolution.pool else resolution.price_per_hour
        chunk.cost.usd = engine_seconds * price / 3600.0
        chunk.timing.queue_ms = placed.queue_ms
        chunk.timing.total_ms = (time.monotonic() - started) * 1000.0
        decoded = chunk.usage.completion_tokens - 1
        if decoded > 0:
            metrics.TPOT.labels(model=resolution.model_version).observe(
                max(0.0, chunk.timing.total_ms - chunk.timing.ttft_ms) / 1000.0 / decoded
            )
        metrics.COMPLETION_TOKENS.labels(tenant=tenant, model=resolution.model_version).inc(
            chunk.usage.completion_tokens
        )
        metrics.PROMPT_TOKENS.labels(tenant=tenant, model=resolution.model_version).inc(chunk.usage.prompt_tokens)
        metrics.COST_USD.labels(tenant=tenant, model=resolution.model_version).inc(chunk.cost.usd)
        metrics.ENGINE_SECONDS.labels(tenant=tenant, model=resolution.model_version).inc(engine_seconds)


def _route_info(decision: RouteDecision) -> generation_pb2.RouteInfo:
    return generation_pb2.RouteInfo(
        model_version=decision.primary.model_version,
        reason=decision.reason,
        deprecation=decision.primary.deprecation,
    )


def _held_back_s(last: generation_pb2.GenerateStreamResponse) -> float | None:
    """Seconds between a whole answer's first token and its one message,
    from the worker's timing (None: the engine answered in one piece)."""
    if last.timing.total_ms <= 0:
        return None
    return max(0.0, last.timing.total_ms - last.timing.ttft_ms) / 1000.0
