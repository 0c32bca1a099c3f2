"""The routing layer as the generation flow sees it:

    decision = await routing.decide(request, tenant=..., request_id=...)
    plan = routing.plan(decision)            # attempts: retries, fallbacks, breakers, budget
    ...                                      # the flow places and streams each attempt
    routing.report(decision, outcome)        # observers (A/B arms, canary steps), off the critical path

plus `escalate` for a cascade whose fast answer failed its check, `reload`
for a new config, and `describe` for ListModels. Retry budget and circuit
breakers are this replica's own and survive reloads; canary state and arm
statistics live in Redis.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

import redis.asyncio as aioredis
from opentelemetry import trace
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from headrace.models.registry import ModelRegistry, Resolution
from headrace.runtime.background import BackgroundTasks
from headrace.runtime.config import Settings
from headrace.runtime.errors import Internal
from headrace.runtime.redis_pool import pooled_redis
from headrace.v1 import generation_pb2
from services.router.routing import metrics
from services.router.routing.arm_stats import ArmStatsStore
from services.router.routing.attempts import AttemptPlan
from services.router.routing.canary import CanarySnapshot
from services.router.routing.circuit_breaker import CircuitBreakers
from services.router.routing.decision import Choice, OutcomeObserver, RequestOutcome, RouteDecision, RoutingRequest
from services.router.routing.policies.ab_split import ArmView
from services.router.routing.policies.difficulty import TextEncoder
from services.router.routing.retry_budget import Backoff, RetryBudget
from services.router.routing.routing_table import RoutingTable, build_alias_routes
from services.router.routing.text_encoder import MiniLMEncoder

log = logging.getLogger(__name__)


def routing_redis(url: str) -> aioredis.Redis:
    """The routing layer's Redis client: short timeouts and no retries, so a
    canary whose state cannot be read routes to stable at once (and asks
    again a second later) instead of holding requests up."""
    return pooled_redis(
        url,
        max_connections=32,
        wait_s=0.5,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
    )


def routing_request(request: generation_pb2.GenerateRequest, *, tenant: str, request_id: str) -> RoutingRequest:
    text = request.prompt if request.prompt else "\n".join(m.content for m in request.messages)
    return RoutingRequest(
        request_id=request_id,
        tenant=tenant,
        model=request.model,
        text=text,
        user=request.user,
        session_id=request.session_id,
        max_tokens=request.sampling.max_tokens if request.sampling.HasField("max_tokens") else 0,
    )


@dataclass(frozen=True)
class RouteDescription:
    """What ListModels adds to one id."""

    policies: tuple[str, ...]
    canary: CanarySnapshot | None
    arms: tuple[ArmView, ...]
    # Set when a promoted canary changed what the id resolves to.
    resolves_to: Resolution | None


class RoutingLayer:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: ModelRegistry,
        redis: aioredis.Redis,
        background: BackgroundTasks,
        encoder_factory: Callable[[], TextEncoder] = MiniLMEncoder,
        rng: random.Random | None = None,
    ) -> None:
        self._models = registry
        self._redis = redis
        self._background = background
        self._encoder_factory = encoder_factory
        self._encoder: TextEncoder | None = None
        self._rng = rng
        self._stats = ArmStatsStore(redis)
        routing = settings.routing
        self.budget = RetryBudget(routing.retry)
        self._backoff = Backoff(routing.retry, rng=rng)
        self.worker_breakers = CircuitBreakers("worker", routing.circuit_breaker)
        self.model_breakers = CircuitBreakers("model", routing.circuit_breaker)
        self._max_attempts = settings.router.max_attempts
        self._current = self._build(settings)

    @property
    def settings(self) -> Settings:
        return self._current.settings

    def reload(self, settings: Settings) -> None:
        """Route by a new (validated) config from the next request on."""
        current = self._build(settings)
        routing = settings.routing
        self.budget.configure(routing.retry)
        self._backoff.configure(routing.retry)
        self.worker_breakers.configure(routing.circuit_breaker)
        self.model_breakers.configure(routing.circuit_breaker)
        self._max_attempts = settings.router.max_attempts
        # Swapped together with no await in between: a request sees the old
        # config or the new one, never a mix.
        self._models.replace(settings)
        self._current = current

    async def decide(self, request: generation_pb2.GenerateRequest, *, tenant: str, request_id: str) -> RouteDecision:
        decision = await self._current.decide(
            routing_request(request, tenant=tenant, request_id=request_id), task="generate"
        )
        _annotate_span(decision)
        return decision

    async def escalate(self, decision: RouteDecision, why: str) -> RouteDecision:
        """A cascade's fast answer failed its check: where the accurate attempt goes."""
        if decision.cascade is None:
            raise Internal("escalate: the decision has no cascade plan")
        choice = Choice(target=decision.cascade.escalate_to, reasons=(*decision.reasons, "cascade-escalated"))
        escalated = await self._current.decide_from(decision.request, choice, task="generate")
        escalated = replace(escalated, attributes=(*escalated.attributes, ("headrace.route.escalated_because", why)))
        _annotate_span(escalated)
        return escalated

    def plan(self, decision: RouteDecision) -> AttemptPlan:
        return AttemptPlan(
            decision=decision,
            worker_breakers=self.worker_breakers,
            model_breakers=self.model_breakers,
            budget=self.budget,
            backoff=self._backoff,
            max_attempts=self._max_attempts,
        )

    def report(self, decision: RouteDecision, outcome: RequestOutcome) -> None:
        for observer in decision.observers:
            self._background.spawn(_observe(observer, outcome), name=f"routing-observe:{decision.request.request_id}")

    async def describe(self, model_id: str, resolves_to: str) -> RouteDescription:
        """Routing facts for one ListModels entry: the policies of an alias,
        the canary of the model version it resolves to, A/B arm results."""
        current = self._current
        table = current.table
        policies = tuple(policy.name for policy in table.routes.get(model_id, ()))
        base = resolves_to.partition("@")[0]
        canary = None
        new_target = None
        controller = table.controllers.get(base)
        alias_target = current.settings.aliases.get(model_id, model_id)
        follows_default = "@" not in alias_target
        if controller is not None and follows_default and resolves_to == controller.stable_model_version:
            try:
                canary = await controller.snapshot()
            except RedisError as exc:
                log.warning("canary %s unreadable for ListModels (%s)", base, exc)
            if canary is not None:
                policies = (*policies, table.canaries[base].name)
                if canary.share >= 1.0:
                    new_target = current.models.resolve(controller.canary_model_version, task="generate")
        arms: list[ArmView] = []
        for split in table.splits.get(model_id, ()):
            try:
                arms += await split.arms()
            except RedisError as exc:
                log.warning("A/B stats of %s unreadable (%s)", split.name, exc)
        return RouteDescription(policies=policies, canary=canary, arms=tuple(arms), resolves_to=new_target)

    def _build(self, settings: Settings) -> RoutingTable:
        table = build_alias_routes(
            settings, redis=self._redis, stats=self._stats, encoder=self._shared_encoder, rng=self._rng
        )
        # Its own snapshot of the model registry: a decision in flight during
        # a reload resolves against the config it started with.
        return RoutingTable(settings, ModelRegistry(settings), table)

    def _shared_encoder(self) -> TextEncoder:
        # One embedding model per process, kept across reloads.
        if self._encoder is None:
            self._encoder = self._encoder_factory()
        return self._encoder


async def _observe(observer: OutcomeObserver, outcome: RequestOutcome) -> None:
    try:
        await observer(outcome)
    except RedisError as exc:
        # Statistics are lost for this request; routing goes on.
        metrics.STATE_ERRORS.labels(op="observe").inc()
        log.warning("routing outcome not recorded (%s)", exc)


def _annotate_span(decision: RouteDecision) -> None:
    span = trace.get_current_span()
    span.set_attribute("headrace.route.model_version", decision.primary.model_version)
    span.set_attribute("headrace.route.reason", decision.reason)
    if decision.fallbacks:
        span.set_attribute("headrace.route.fallbacks", [f.model_version for f in decision.fallbacks])
    for key, value in decision.attributes:
        span.set_attribute(key, value)
