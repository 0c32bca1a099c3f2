"""The registry as the router routes by it: the model registry (models,
versions, aliases; headrace/models/registry.py) plus the routing
table built from the same config (policies per alias, canaries and
fallbacks per model). Both are built whole from one validated config and
swapped together on reload, so a request never sees half of each.

How a requested name becomes a decision:

    "smollm2@2"   pinned: that version, no policy
    "smollm2"     the model's default version, split by its canary if it has one
    "chat"        an alias: its target, then its route's policies in order;
                  a policy's target may be another routed alias (nesting),
                  a model (canary applies) or a pinned version
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import redis.asyncio as aioredis

from headrace.models.registry import ModelRegistry, Task
from headrace.runtime.config import Settings
from headrace.runtime.errors import Internal
from headrace.runtime.routing_settings import FastAccuratePolicySettings
from services.router.routing.arm_stats import ArmStatsStore
from services.router.routing.canary import CanaryController
from services.router.routing.decision import Choice, RouteDecision, RoutingRequest
from services.router.routing.policies.ab_split import AbSplitPolicy
from services.router.routing.policies.base import RoutingPolicy
from services.router.routing.policies.canary import CanaryPolicy
from services.router.routing.policies.difficulty import CentroidClassifier, DifficultyScorer, TextEncoder
from services.router.routing.policies.fast_accurate import FastAccuratePolicy

log = logging.getLogger(__name__)

# Aliases routing to aliases: config validation rejects loops; this bounds
# the depth anyway.
_MAX_DEPTH = 8


@dataclass(frozen=True)
class AliasRoutes:
    # alias -> its policies, in order
    routes: Mapping[str, tuple[RoutingPolicy, ...]]
    # model -> its canary
    canaries: Mapping[str, CanaryPolicy]
    controllers: Mapping[str, CanaryController]
    # alias -> its A/B splits (for ListModels)
    splits: Mapping[str, tuple[AbSplitPolicy, ...]]
    # model -> fallback targets, in order
    fallbacks: Mapping[str, tuple[str, ...]]


def build_alias_routes(
    settings: Settings,
    *,
    redis: aioredis.Redis,
    stats: ArmStatsStore,
    encoder: Callable[[], TextEncoder],
    rng: random.Random | None = None,
) -> AliasRoutes:
    routing = settings.routing
    routes: dict[str, tuple[RoutingPolicy, ...]] = {}
    splits: dict[str, tuple[AbSplitPolicy, ...]] = {}
    for alias, route in routing.routes.items():
        policies: list[RoutingPolicy] = []
        for spec in route.policies:
            if isinstance(spec, FastAccuratePolicySettings):
                classifier = None
                if spec.scorer.embedding is not None and spec.scorer.embedding_weight > 0:
                    classifier = CentroidClassifier(encoder(), spec.scorer.embedding)
                policies.append(FastAccuratePolicy(alias, spec, DifficultyScorer(spec.scorer, classifier)))
            else:
                policies.append(AbSplitPolicy(alias, spec, stats, rng=rng))
        routes[alias] = tuple(policies)
        splits[alias] = tuple(p for p in policies if isinstance(p, AbSplitPolicy))
    controllers: dict[str, CanaryController] = {}
    for model, canary in routing.canaries.items():
        stable = settings.models[model].default_version
        if canary.version == stable:
            log.info("canary of %s: version %s is already the default; nothing to split", model, stable)
            continue
        controllers[model] = CanaryController(model, stable, canary, redis, stats, state_ttl_s=routing.state_ttl_s)
    return AliasRoutes(
        routes=routes,
        canaries={model: CanaryPolicy(controller, rng=rng) for model, controller in controllers.items()},
        controllers=controllers,
        splits=splits,
        fallbacks={model: tuple(targets) for model, targets in routing.fallbacks.items()},
    )


class RoutingTable:
    """One config's model registry and routing table, and the decision
    they make for a request."""

    def __init__(self, settings: Settings, models: ModelRegistry, table: AliasRoutes) -> None:
        self.settings = settings
        self.models = models
        self.table = table

    async def decide(self, request: RoutingRequest, *, task: Task) -> RouteDecision:
        requested = request.model or self._default_for(task)
        if requested in self.settings.aliases:
            choice = Choice(target=requested, reasons=())
        else:
            choice = Choice(target=requested, reasons=("pinned" if "@" in requested else "default",))
        return await self.decide_from(request, choice, task=task)

    async def decide_from(self, request: RoutingRequest, choice: Choice, *, task: Task) -> RouteDecision:
        """Expand a choice (aliases, their policies, canaries) into a decision."""
        choice = await self._expand(request, choice, depth=0)
        # Validates the target and task, and raises NOT_FOUND for unknown or removed versions.
        resolution = self.models.resolve(choice.target, task=task)
        base = resolution.model_version.partition("@")[0]
        fallbacks = []
        for target in self.table.fallbacks.get(base, ()):
            fallback = self.models.resolve(target, task=task)
            if fallback.model_version != resolution.model_version:
                fallbacks.append(fallback)
        return RouteDecision(
            request=request,
            primary=resolution,
            reasons=choice.reasons or ("default",),
            fallbacks=tuple(fallbacks),
            observers=choice.observers,
            cascade=choice.cascade,
            attributes=choice.attributes,
        )

    async def _expand(self, request: RoutingRequest, choice: Choice, *, depth: int) -> Choice:
        if depth > _MAX_DEPTH:
            raise Internal(f"routing: aliases nest deeper than {_MAX_DEPTH} at {choice.target!r}")
        target = choice.target
        if "@" not in target and target in self.settings.aliases:
            choice = replace(choice, target=self.settings.aliases[target], reasons=(*choice.reasons, f"alias:{target}"))
            # A chain: each policy sees (and may replace) the target the one
            # before it chose; what the chain ends on is expanded in turn, so
            # a target may be another routed alias.
            for policy in self.table.routes.get(target, ()):
                choice = await policy.choose(request, choice)
            return await self._expand(request, choice, depth=depth + 1)
        base, _, version = target.partition("@")
        canary = self.table.canaries.get(base)
        if canary is not None and not version:
            choice = await canary.choose(request, choice)
        return choice

    def _default_for(self, task: Task) -> str:
        return self.models.default_for(task)
