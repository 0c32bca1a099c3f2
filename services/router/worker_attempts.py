"""One routed generation against the workers, and nothing else:

    place (scheduler) -> hold the lease -> stream from the worker
    -> fill the last chunk (timing, cost) -> give the lease back

with another attempt where the plan (routing/attempts.py) allows one:
another worker or a fallback model, when an attempt fails before its
first token. After the first token the error reaches the client, saying
where it broke.

What it produced is its result (`served`, `ttft_s`), read once the stream
ended; it changes nothing its caller passed in.

The first placement may be made ahead (`place_ahead`, while the cache is
asked). It asks for a slot free now only (PlaceRequest.only_if_free):
never a place in the scheduler's queue, which a cache hit would hold for
nothing. A hit gives the lease back at once (`abandon`); the placement is
never cancelled midway, since a lease granted as the cancel crossed it
would be lost until it expired. With no slot free, a miss places again,
queueing, as without the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from headrace.request_rules.prefix_hashing import request_prefix_hashes
from headrace.request_rules.token_estimate import estimate_prompt_tokens
from headrace.runtime.errors import HeadraceError, ResourceExhausted
from headrace.v1 import generation_pb2, scheduler_pb2, worker_pb2
from services.router import metrics
from services.router.leasing import LeaseUse
from services.router.routing.attempts import Attempt, AttemptPlan
from services.router.routing.decision import RequestOutcome
from services.router.workers import Workers

log = logging.getLogger(__name__)

# An attempt and its placement: a lease, or why there is none.
_Placement = tuple[Attempt, scheduler_pb2.PlaceResponse | HeadraceError]
# Placements made ahead whose request no longer wants them, until they
# answer and their lease goes back (asyncio keeps only weak references).
_LETTING_GO: set[asyncio.Task[_Placement]] = set()


@dataclass(frozen=True)
class Served:
    """An answer that reached its last chunk."""

    # As sent on the first chunk: the version, reason, worker, attempts.
    route: generation_pb2.RouteInfo
    # The last chunk as sent: finish reason, usage, timing, cost.
    last: generation_pb2.GenerateStreamResponse


@dataclass(frozen=True)
class RequestMeta:
    """Who asks, and since when (time.monotonic())."""

    tenant: str
    request_id: str
    started: float
    # The worker sends the answer as one message (it may ask its backend
    # in one unary call).
    whole_answer: bool = False


class WorkerAttempts:
    def __init__(
        self,
        workers: Workers,
        plan: AttemptPlan,
        request: generation_pb2.GenerateRequest,
        meta: RequestMeta,
    ) -> None:
        self._workers = workers
        self._plan = plan
        self._request = request
        self._meta = meta
        self._ahead: asyncio.Task[_Placement] | None = None
        # The route the answer's first chunk carried. (The text is not kept
        # here: the caller has every chunk, and the per-token path copies
        # nothing it does not need.)
        self._route = generation_pb2.RouteInfo()
        # From the request's start to the first token; None until it came, or
        # when unknown (a whole answer its engine gave in one piece).
        self.ttft_s: float | None = None
        self.served: Served | None = None

    @property
    def outcomes(self) -> tuple[RequestOutcome.Attempt, ...]:
        """Every attempt made, for the routing layer's observers."""
        return self._plan.attempts

    def place_ahead(self) -> None:
        """Start the first placement now, on a slot free now only; stream()
        takes it up."""
        if self._ahead is None:
            self._ahead = asyncio.create_task(
                self._place_next(only_if_free=True), name=f"place-ahead:{self._meta.request_id}"
            )

    def abandon(self) -> None:
        """Nothing will be streamed (the cache answered, or the request
        ended): a lease placed ahead goes back as soon as it is granted.
        Safe to call twice."""
        ahead, self._ahead = self._ahead, None
        self._plan.close()
        if ahead is not None:
            self._let_go(ahead)

    def _let_go(self, ahead: asyncio.Task[_Placement]) -> None:
        if not ahead.done():
            # In flight: it answers at once (it never queues).
            _LETTING_GO.add(ahead)
            ahead.add_done_callback(self._let_go)
            return
        _LETTING_GO.discard(ahead)
        if ahead.cancelled() or ahead.exception() is not None:
            return
        _, placed = ahead.result()
        if isinstance(placed, scheduler_pb2.PlaceResponse):
            metrics.PLACED_AHEAD.labels(outcome="given_back").inc()
            self._workers.release(placed.lease)
        else:
            _count_ahead_refusal(placed)

    async def stream(
        self, route: generation_pb2.RouteInfo
    ) -> AsyncGenerator[generation_pb2.GenerateStreamResponse, None]:
        """The answer's chunks: the first carries model and route (`route`,
        copied, with the attempt's own facts: version, reason, worker), the
        last finish reason, usage, timing and cost."""
        try:
            while True:
                attempt, placed = await self._placement()
                async with self._workers.hold(placed.lease) as use:
                    first = True
                    try:
                        chunks = self._workers.generate(placed.lease, self._worker_request(attempt, placed))
                        async with contextlib.aclosing(chunks):
                            async for chunk in chunks:
                                if first:
                                    first = False
                                    self._first_chunk(chunk, route, attempt, placed, use)
                                if chunk.finish_reason:
                                    self._last_chunk(chunk, attempt, placed, use)
                                    # The answer is whole: served, however the call
                                    # ends now (a client that stops reading at the
                                    # last chunk, a status that fails after it).
                                    use.outcome = scheduler_pb2.LEASE_OUTCOME_OK
                                    self._succeeded(attempt)
                                yield chunk
                    except HeadraceError as error:
                        if self.served is not None:
                            log.warning(
                                "worker %s failed after the last chunk of %s (%s); the answer was whole",
                                placed.lease.worker_id,
                                self._meta.request_id,
                                error,
                            )
                            return
                        if self._plan.worker_failed(attempt, error, after_first_token=not first):
                            continue
                        if first:
                            raise
                        # Tokens already reached the client: say plainly where it broke.
                        raise type(error)(
                            f"generation failed after the first token on {attempt.resolution.model_version} "
                            f"(worker {placed.lease.worker_id}): {error.message}",
                            retry_after_s=error.retry_after_s,
                        ) from error
                    if self.served is None:
                        # Ended well without a last chunk: as before, a success.
                        use.outcome = scheduler_pb2.LEASE_OUTCOME_OK
                        self._succeeded(attempt)
                    return
        finally:
            self.abandon()

    async def _placement(self) -> tuple[Attempt, scheduler_pb2.PlaceResponse]:
        """The next attempt with its lease (the one placed ahead first);
        placements that found no worker move on as the plan says."""
        while True:
            ahead, self._ahead = self._ahead, None
            if ahead is None:
                attempt, placed = await self._place_next()
            else:
                attempt, placed = await self._taken_up(ahead)
            if isinstance(placed, scheduler_pb2.PlaceResponse):
                self._plan.placed(attempt, placed.lease.worker_id)
                return attempt, placed
            if not self._plan.placement_failed(attempt, placed):
                raise placed

    async def _taken_up(self, ahead: asyncio.Task[_Placement]) -> _Placement:
        """The placement made ahead, once the cache missed; with no slot free
        then, placed again, queueing."""
        try:
            # Shielded: a request cancelled now must not cancel the placement
            # midway (its lease would be lost); it goes back once granted.
            attempt, placed = await asyncio.shield(ahead)
        except asyncio.CancelledError:
            self._let_go(ahead)
            raise
        if isinstance(placed, scheduler_pb2.PlaceResponse):
            metrics.PLACED_AHEAD.labels(outcome="used").inc()
            return attempt, placed
        _count_ahead_refusal(placed)
        if isinstance(placed, ResourceExhausted):
            return attempt, await self._place(attempt)
        return attempt, placed

    async def _place_next(self, *, only_if_free: bool = False) -> _Placement:
        attempt = await self._plan.next()
        return attempt, await self._place(attempt, only_if_free=only_if_free)

    async def _place(
        self, attempt: Attempt, *, only_if_free: bool = False
    ) -> scheduler_pb2.PlaceResponse | HeadraceError:
        request = self._request
        version = attempt.resolution.model_version
        try:
            return await self._workers.place(
                scheduler_pb2.PlaceRequest(
                    request_id=self._meta.request_id,
                    model_version=version,
                    tenant=self._meta.tenant,
                    priority=request.priority,
                    session_id=request.session_id,
                    # For the scheduler's prefix affinity (headrace/request_rules/prefix_hashing.py);
                    # per attempt, since a fallback is another model version.
                    prefix_hashes=request_prefix_hashes(request, version),
                    prompt_tokens=estimate_prompt_tokens(request),
                    max_tokens=request.sampling.max_tokens if request.sampling.HasField("max_tokens") else 0,
                    exclude_workers=attempt.exclude_workers,
                    only_if_free=only_if_free,
                )
            )
        except HeadraceError as error:
            return error

    def _worker_request(
        self, attempt: Attempt, placed: scheduler_pb2.PlaceResponse
    ) -> worker_pb2.WorkerGenerateRequest:
        return worker_pb2.WorkerGenerateRequest(
            request_id=self._meta.request_id,
            model_version=attempt.resolution.model_version,
            request=self._request,
            lease_id=placed.lease.lease_id,
            tenant=self._meta.tenant,
            priority=self._request.priority,
            whole_answer=self._meta.whole_answer,
        )

    def _first_chunk(
        self,
        chunk: generation_pb2.GenerateStreamResponse,
        route: generation_pb2.RouteInfo,
        attempt: Attempt,
        placed: scheduler_pb2.PlaceResponse,
        use: LeaseUse,
    ) -> None:
        """Model and route on the first chunk; the time to the first token."""
        resolution = attempt.resolution
        chunk.route.CopyFrom(route)
        chunk.route.model_version = resolution.model_version
        chunk.route.reason = attempt.reason
        chunk.route.deprecation = resolution.deprecation
        chunk.route.worker_id = placed.lease.worker_id
        chunk.route.attempts = attempt.number
        chunk.model = resolution.model_version
        # A whole answer's one message comes at its end: the worker says how
        # long it held its tokens after the first (None: it cannot).
        held_back_s = _held_back_s(chunk) if self._meta.whole_answer else 0.0
        if held_back_s is not None:
            self.ttft_s = use.ttft_s = time.monotonic() - self._meta.started - held_back_s
            metrics.TTFT.labels(model=resolution.model_version).observe(self.ttft_s)
        self._route.CopyFrom(chunk.route)

    def _last_chunk(
        self,
        chunk: generation_pb2.GenerateStreamResponse,
        attempt: Attempt,
        placed: scheduler_pb2.PlaceResponse,
        use: LeaseUse,
    ) -> None:
        """Timing and cost on the last chunk, counted in the metrics."""
        resolution = attempt.resolution
        version = resolution.model_version
        tenant = self._meta.tenant
        engine_seconds = chunk.cost.engine_seconds
        # The version's own price, unless another of its pools served it.
        price = placed.price_per_hour if placed.pool and placed.pool != resolution.pool else resolution.price_per_hour
        chunk.cost.usd = engine_seconds * price / 3600.0
        chunk.timing.queue_ms = placed.queue_ms
        # 0 when unknown: never the total time in its place.
        chunk.timing.ttft_ms = 0.0 if self.ttft_s is None else self.ttft_s * 1000.0
        chunk.timing.total_ms = (time.monotonic() - self._meta.started) * 1000.0
        decoded = chunk.usage.completion_tokens - 1
        if decoded > 0 and self.ttft_s is not None:
            metrics.TPOT.labels(model=version).observe(
                max(0.0, chunk.timing.total_ms - chunk.timing.ttft_ms) / 1000.0 / decoded
            )
        metrics.COMPLETION_TOKENS.labels(tenant=tenant, model=version).inc(chunk.usage.completion_tokens)
        metrics.PROMPT_TOKENS.labels(tenant=tenant, model=version).inc(chunk.usage.prompt_tokens)
        metrics.COST_USD.labels(tenant=tenant, model=version).inc(chunk.cost.usd)
        metrics.ENGINE_SECONDS.labels(tenant=tenant, model=version).inc(engine_seconds)
        use.usage = chunk.usage
        self.served = Served(route=self._route, last=chunk)

    def _succeeded(self, attempt: Attempt) -> None:
        served = self.served
        self._plan.succeeded(
            attempt,
            ttft_s=None if self.ttft_s is None else self.ttft_s - (attempt.started - self._meta.started),
            total_s=time.monotonic() - attempt.started,
            completion_tokens=served.last.usage.completion_tokens if served is not None else 0,
            cost_usd=served.last.cost.usd if served is not None else 0.0,
        )


def _count_ahead_refusal(error: HeadraceError) -> None:
    metrics.PLACED_AHEAD.labels(outcome="busy" if isinstance(error, ResourceExhausted) else "failed").inc()


def _held_back_s(chunk: generation_pb2.GenerateStreamResponse) -> float | None:
    """Seconds between a whole answer's first token and its one message,
    from the worker's timing (None: the engine answered in one piece)."""
    if chunk.timing.total_ms <= 0:
        return None
    return max(0.0, chunk.timing.total_ms - chunk.timing.ttft_ms) / 1000.0
