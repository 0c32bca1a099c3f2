"""One online request, from the router's side:

    resolve the model -> cache lookup -> scheduler.Place -> worker.Generate
    (streamed straight from the worker) -> release the lease, store the
    answer in the cache (both off the critical path).

A failure before the first token is retried on another placement; after
the first token the error reaches the client as its status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import grpc.aio

from headrace.prefix_hashing import request_prefix_hashes
from headrace.runtime.background import BackgroundTasks
from headrace.runtime.channels import ChannelPool, call_options
from headrace.runtime.config import Settings
from headrace.runtime.errors import from_rpc_error
from headrace.v1 import generation_pb2, scheduler_pb2, worker_pb2, worker_pb2_grpc
from services.router import metrics
from services.router.cache_client import CacheClient
from services.router.leasing import Leasing
from services.router.model_registry import ModelRegistry, Resolution

log = logging.getLogger(__name__)

# Worker failures before the first token that another placement may fix.
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


@dataclass
class _Answer:
    """What the stream produced, for the cache and the unary reply."""

    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    last: generation_pb2.GenerateStreamResponse | None = None


def estimate_prompt_tokens(request: generation_pb2.GenerateRequest) -> int:
    chars = len(request.prompt) + sum(len(m.content) for m in request.messages)
    # ~4 characters per token for English text; only a placement hint.
    return max(1, chars // 4)


class GenerationFlow:
    def __init__(
        self,
        *,
        settings: Settings,
        registry: ModelRegistry,
        leasing: Leasing,
        cache: CacheClient,
        workers: ChannelPool,
        background: BackgroundTasks,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._leasing = leasing
        self._cache = cache
        self._workers = workers
        self._background = background

    async def stream(
        self, request: generation_pb2.GenerateRequest, *, tenant: str, request_id: str
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        """Deltas of the answer; the first carries model and route, the last
        finish reason, usage, timing and cost."""
        started = time.monotonic()
        resolution = self._registry.resolve(request.model, task="generate")
        route = generation_pb2.RouteInfo(
            model_version=resolution.model_version, reason=resolution.reason, deprecation=resolution.deprecation
        )
        lookup = await self._cache.lookup(tenant=tenant, model_version=resolution.model_version, request=request)
        route.cache = lookup.outcome or generation_pb2.CACHE_OUTCOME_MISS
        if lookup.outcome in (generation_pb2.CACHE_OUTCOME_HIT_EXACT, generation_pb2.CACHE_OUTCOME_HIT_SEMANTIC):
            route.cache_similarity = lookup.similarity
            route.cache_entry_id = lookup.entry_id
            yield self._cached_answer(lookup.response, route, request_id, started)
            return
        answer = _Answer()
        async for chunk in self._generate_placed(request, resolution, route, tenant, request_id, started, answer):
            yield chunk
        if answer.last is not None and route.cache != generation_pb2.CACHE_OUTCOME_BYPASS:
            self._background.spawn(
                self._cache.store(
                    tenant=tenant,
                    model_version=resolution.model_version,
                    request=request,
                    response=self._to_response(answer, route, request_id, resolution.model_version),
                ),
                name=f"cache-store:{request_id}",
            )

    async def complete(
        self, request: generation_pb2.GenerateRequest, *, tenant: str, request_id: str
    ) -> generation_pb2.GenerateResponse:
        answer = _Answer()
        route = generation_pb2.RouteInfo()
        model = ""
        async for chunk in self.stream(request, tenant=tenant, request_id=request_id):
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

    @staticmethod
    def _cached_answer(
        cached: generation_pb2.GenerateResponse,
        route: generation_pb2.RouteInfo,
        request_id: str,
        started: float,
    ) -> generation_pb2.GenerateStreamResponse:
        elapsed_ms = (time.monotonic() - started) * 1000.0
        return generation_pb2.GenerateStreamResponse(
            request_id=request_id,
            text=cached.text,
            token_ids=cached.token_ids,
            finish_reason=cached.finish_reason,
            usage=cached.usage,
            route=route,
            timing=generation_pb2.Timing(ttft_ms=elapsed_ms, total_ms=elapsed_ms),
            cost=generation_pb2.Cost(),
            model=route.model_version,
        )

    async def _generate_placed(
        self,
        request: generation_pb2.GenerateRequest,
        resolution: Resolution,
        route: generation_pb2.RouteInfo,
        tenant: str,
        request_id: str,
        started: float,
        answer: _Answer,
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        excluded: list[str] = []
        max_tokens = request.sampling.max_tokens if request.sampling.HasField("max_tokens") else 0
        # For the scheduler's prefix affinity (headrace/prefix_hashing.py).
        prefix_hashes = request_prefix_hashes(request, resolution.model_version)
        for attempt in range(1, self._settings.router.max_attempts + 1):
            placed = await self._leasing.place(
                scheduler_pb2.PlaceRequest(
                    request_id=request_id,
                    model_version=resolution.model_version,
                    tenant=tenant,
                    priority=request.priority,
                    session_id=request.session_id,
                    prefix_hashes=prefix_hashes,
                    prompt_tokens=estimate_prompt_tokens(request),
                    max_tokens=max_tokens,
                    exclude_workers=excluded,
                )
            )
            route.worker_id = placed.lease.worker_id
            route.attempts = attempt
            async with self._leasing.hold(placed.lease) as use:
                call = worker_pb2_grpc.WorkerStub(self._workers.get(placed.lease.endpoint)).Generate(
                    worker_pb2.WorkerGenerateRequest(
                        request_id=request_id,
                        model_version=resolution.model_version,
                        request=request,
                        lease_id=placed.lease.lease_id,
                        tenant=tenant,
                        priority=request.priority,
                    ),
                    **call_options(),
                )
                first = True
                ttft_s = 0.0
                try:
                    async for chunk in call:
                        if first:
                            first = False
                            chunk.route.CopyFrom(route)
                            chunk.model = resolution.model_version
                            ttft_s = time.monotonic() - started
                            metrics.TTFT.labels(model=resolution.model_version).observe(ttft_s)
                        answer.text.append(chunk.text)
                        answer.token_ids.extend(chunk.token_ids)
                        if chunk.finish_reason:
                            chunk.timing.ttft_ms = ttft_s * 1000.0
                            self._finish(chunk, resolution, placed.queue_ms, started, tenant)
                            answer.last = chunk
                            use.usage = chunk.usage
                        yield chunk
                    use.outcome = scheduler_pb2.LEASE_OUTCOME_OK
                    return
                except grpc.aio.AioRpcError as exc:
                    if first and exc.code() in _RETRYABLE and attempt < self._settings.router.max_attempts:
                        log.warning(
                            "worker %s failed before the first token (%s); retrying elsewhere",
                            placed.lease.worker_id,
                            exc.code().name,
                        )
                        excluded.append(placed.lease.worker_id)
                        continue
                    raise from_rpc_error(exc) from exc
                finally:
                    # Also on cancel and on an early close by the consumer:
                    # the worker sees the cancel and aborts the sequence.
                    call.cancel()

    def _finish(
        self,
        chunk: generation_pb2.GenerateStreamResponse,
        resolution: Resolution,
        queue_ms: float,
        started: float,
        tenant: str,
    ) -> None:
        """Fill in timing and cost on the last chunk, and count them."""
        engine_seconds = chunk.cost.engine_seconds
        chunk.cost.usd = engine_seconds * resolution.price_per_hour / 3600.0
        chunk.timing.queue_ms = queue_ms
        chunk.timing.total_ms = (time.monotonic() - started) * 1000.0
        metrics.COMPLETION_TOKENS.labels(tenant=tenant, model=resolution.model_version).inc(
            chunk.usage.completion_tokens
        )
        metrics.PROMPT_TOKENS.labels(tenant=tenant, model=resolution.model_version).inc(chunk.usage.prompt_tokens)
        metrics.COST_USD.labels(tenant=tenant, model=resolution.model_version).inc(chunk.cost.usd)
        metrics.ENGINE_SECONDS.labels(tenant=tenant, model=resolution.model_version).inc(engine_seconds)
