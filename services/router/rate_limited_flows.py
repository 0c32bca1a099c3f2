"""The flows, metered by the tenant's rate limits and quota: the one place
both front doors (gRPC servicer and HTTP gateway) pass through, so a limit
holds whichever API a tenant calls.

Admission reserves the request and its estimated tokens (prompt estimate +
max_tokens) before any work; once the answer is done (or abandoned) the
reservation is settled with the tokens really used, off the critical path.
Cache hits use no engine tokens and are settled as zero.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from headrace.request_rules.token_estimate import estimate_prompt_tokens, estimate_tokens
from headrace.runtime.background import BackgroundTasks
from headrace.runtime.config import Settings
from headrace.v1 import generation_pb2
from services.router.flow_protocols import Embedding, Generation, closing
from services.router.rate_limits import Reservation, TenantRateLimiter

_CACHE_HITS = frozenset({generation_pb2.CACHE_OUTCOME_HIT_EXACT, generation_pb2.CACHE_OUTCOME_HIT_SEMANTIC})


def reserve_for(request: generation_pb2.GenerateRequest) -> int:
    """Tokens a generation may use, as far as is known before it runs."""
    max_tokens = request.sampling.max_tokens if request.sampling.HasField("max_tokens") else 0
    return estimate_prompt_tokens(request) + max_tokens


class _UsageSeen:
    """Tokens a stream used, from its last chunk's usage, or counted from
    its deltas when it ended early."""

    def __init__(self, prompt_estimate: int) -> None:
        self._prompt_estimate = prompt_estimate
        self._completion = 0
        self._final: int | None = None
        self.cached = False

    def observe(self, chunk: generation_pb2.GenerateStreamResponse) -> None:
        if chunk.HasField("route") and chunk.route.cache in _CACHE_HITS:
            self.cached = True
        self._completion += len(chunk.token_ids)
        if chunk.finish_reason and chunk.HasField("usage"):
            self._final = chunk.usage.total_tokens or chunk.usage.prompt_tokens + chunk.usage.completion_tokens

    @property
    def tokens(self) -> int:
        if self.cached:
            return 0
        if self._final is not None:
            return self._final
        return self._prompt_estimate + self._completion if self._completion else 0


class RateLimitedGeneration:
    def __init__(
        self,
        inner: Generation,
        *,
        limiter: TenantRateLimiter,
        settings: Settings,
        background: BackgroundTasks,
    ) -> None:
        self._inner = inner
        self._limiter = limiter
        self._settings = settings
        self._background = background

    async def stream(
        self, request: generation_pb2.GenerateRequest, *, tenant: str, request_id: str
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        reservation = await self._limiter.admit(
            tenant, self._settings.tenant_rate_limits(tenant), reserve_tokens=reserve_for(request)
        )
        seen = _UsageSeen(estimate_prompt_tokens(request))
        try:
            # An abandoned stream closes the flow's stream at once
            # (the worker call is cancelled), not whenever it is collected.
            async with closing(self._inner.stream(request, tenant=tenant, request_id=request_id)) as chunks:
                async for chunk in chunks:
                    seen.observe(chunk)
                    yield chunk
        finally:
            self._settle(reservation, seen.tokens, request_id)

    async def complete(
        self, request: generation_pb2.GenerateRequest, *, tenant: str, request_id: str
    ) -> generation_pb2.GenerateResponse:
        reservation = await self._limiter.admit(
            tenant, self._settings.tenant_rate_limits(tenant), reserve_tokens=reserve_for(request)
        )
        used = 0
        try:
            response = await self._inner.complete(request, tenant=tenant, request_id=request_id)
            if response.route.cache not in _CACHE_HITS:
                used = response.usage.total_tokens or response.usage.prompt_tokens + response.usage.completion_tokens
            return response
        finally:
            self._settle(reservation, used, request_id)

    def _settle(self, reservation: Reservation | None, used: int, request_id: str) -> None:
        if reservation is not None and reservation.counts_tokens:
            self._background.spawn(
                self._limiter.settle(reservation, used_tokens=used), name=f"rate-limit-settle:{request_id}"
            )


class RateLimitedEmbedding:
    def __init__(
        self,
        inner: Embedding,
        *,
        limiter: TenantRateLimiter,
        settings: Settings,
        background: BackgroundTasks,
    ) -> None:
        self._inner = inner
        self._limiter = limiter
        self._settings = settings
        self._background = background

    async def embed(
        self, request: generation_pb2.EmbedRequest, *, tenant: str, request_id: str
    ) -> generation_pb2.EmbedResponse:
        estimate = estimate_tokens(sum(len(text) for text in request.inputs))
        reservation = await self._limiter.admit(
            tenant, self._settings.tenant_rate_limits(tenant), reserve_tokens=estimate
        )
        used = 0
        try:
            response = await self._inner.embed(request, tenant=tenant, request_id=request_id)
            used = response.usage.total_tokens or response.usage.prompt_tokens
            return response
        finally:
            if reservation is not None and reservation.counts_tokens:
                self._background.spawn(
                    self._limiter.settle(reservation, used_tokens=used), name=f"rate-limit-settle:{request_id}"
                )
