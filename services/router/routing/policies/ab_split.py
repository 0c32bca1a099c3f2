"""A/B split: weighted arms, sticky per user or session through a stable
hash (the same caller gets the same arm on every replica, across
restarts and config reloads that keep the weights), with per-arm results
(requests, errors, latency, tokens, cost) in Prometheus and in Redis, where
ListModels reads them back."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from headrace.runtime.routing_settings import AbPolicySettings, ArmSettings
from services.router.routing import metrics
from services.router.routing.arm_stats import ArmStatsStore, ArmSummary, Sample
from services.router.routing.decision import Choice, RequestOutcome, RoutingRequest
from services.router.routing.stable_hash import unit_interval

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArmView:
    """One arm as ListModels shows it."""

    policy: str
    arm: str
    target: str
    weight: float
    stats: ArmSummary


class AbSplitPolicy:
    def __init__(
        self,
        route: str,
        settings: AbPolicySettings,
        stats: ArmStatsStore,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.experiment = settings.experiment or route
        self.name = f"ab:{self.experiment}"
        self._settings = settings
        self._stats = stats
        self._rng = rng or random.Random()
        total = sum(arm.weight for arm in settings.arms)
        self._bounds: list[tuple[float, ArmSettings]] = []
        cumulative = 0.0
        for arm in settings.arms:
            cumulative += arm.weight / total
            self._bounds.append((cumulative, arm))

    def arm_for(self, request: RoutingRequest) -> ArmSettings:
        key = self._sticky_key(request)
        point = unit_interval("ab", self.experiment, key) if key else self._rng.random()
        for bound, arm in self._bounds:
            if point < bound and arm.weight > 0:
                return arm
        # Rounding at the top end: the last arm with any weight.
        return next(arm for _bound, arm in reversed(self._bounds) if arm.weight > 0)

    async def choose(self, request: RoutingRequest, choice: Choice) -> Choice:
        arm = self.arm_for(request)
        metrics.DECISIONS.labels(policy=self.name, choice=arm.name).inc()

        async def observe(outcome: RequestOutcome) -> None:
            await self._observe(arm.name, outcome)

        return choice.to(arm.target, f"{self.name}/{arm.name}", observer=observe)

    async def arms(self) -> list[ArmView]:
        summaries = await self._stats.read([self._stats_key(arm.name) for arm in self._settings.arms])
        return [
            ArmView(policy=self.name, arm=arm.name, target=arm.target, weight=arm.weight, stats=summary)
            for arm, summary in zip(self._settings.arms, summaries, strict=True)
        ]

    def _sticky_key(self, request: RoutingRequest) -> str:
        sticky = self._settings.sticky
        if sticky == "user":
            return f"user:{request.user}" if request.user else ""
        if sticky == "session":
            return f"session:{request.session_id}" if request.session_id else ""
        if request.user:
            return f"user:{request.user}"
        return f"session:{request.session_id}" if request.session_id else ""

    def _stats_key(self, arm: str) -> str:
        return f"ab:{self.experiment}:{arm}"

    async def _observe(self, arm: str, outcome: RequestOutcome) -> None:
        if outcome.cancelled:
            return
        ok = not outcome.error
        labels = {"policy": self.name, "arm": arm}
        metrics.ARM_REQUESTS.labels(**labels, outcome="ok" if ok else "error").inc()
        if ok:
            if outcome.ttft_s is not None:
                metrics.ARM_TTFT.labels(**labels).observe(outcome.ttft_s)
            if outcome.total_s is not None:
                metrics.ARM_LATENCY.labels(**labels).observe(outcome.total_s)
            metrics.ARM_TOKENS.labels(**labels).inc(outcome.completion_tokens)
            metrics.ARM_COST.labels(**labels).inc(outcome.cost_usd)
        await self._stats.record(
            self._stats_key(arm),
            Sample(
                ok=ok,
                ttft_ms=None if outcome.ttft_s is None else outcome.ttft_s * 1000.0,
                total_ms=None if outcome.total_s is None else outcome.total_s * 1000.0,
                completion_tokens=outcome.completion_tokens,
                cost_usd=outcome.cost_usd,
            ),
        )
