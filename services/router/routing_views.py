"""Routing state as the public API shows it: the policies, canary and A/B
arms of each ListModels entry (proto views of services/router/routing)."""

from __future__ import annotations

from collections.abc import Mapping

from headrace.v1 import models_pb2
from services.router.routing.arm_stats import ArmSummary
from services.router.routing.canary import CanarySnapshot, CanaryStatus
from services.router.routing.layer import RouteDescription, RoutingLayer

_CANARY_STATES = {
    CanaryStatus.RUNNING: models_pb2.CANARY_STATE_RUNNING,
    CanaryStatus.PROMOTED: models_pb2.CANARY_STATE_PROMOTED,
    CanaryStatus.ROLLED_BACK: models_pb2.CANARY_STATE_ROLLED_BACK,
}


async def annotate_models(
    models: list[models_pb2.ModelInfo], routing: RoutingLayer, *, ready_workers: Mapping[str, int]
) -> None:
    """Add routing facts to ListModels entries, in place."""
    for info in models:
        description = await routing.describe(info.id, info.resolves_to)
        apply_description(info, description)
        info.ready_workers = ready_workers.get(info.pool, 0)


def apply_description(info: models_pb2.ModelInfo, description: RouteDescription) -> None:
    info.policies.extend(description.policies)
    if description.resolves_to is not None:
        # A promoted canary: the id serves the canary version now.
        info.resolves_to = description.resolves_to.model_version
        info.pool = description.resolves_to.pool
        info.engine = description.resolves_to.engine
        info.price_per_hour = description.resolves_to.price_per_hour
    if description.canary is not None:
        info.canary.CopyFrom(canary_status(description.canary))
    for arm in description.arms:
        info.arms.append(arm_stats(arm.policy, arm.arm, arm.target, arm.weight, arm.stats))


def canary_status(snapshot: CanarySnapshot) -> models_pb2.CanaryStatus:
    state = snapshot.state
    policy = f"canary:{snapshot.model}"
    return models_pb2.CanaryStatus(
        canary_version=f"{snapshot.model}@{state.canary}",
        stable_version=f"{snapshot.model}@{state.stable}",
        state=_CANARY_STATES[state.status],
        share=snapshot.share,
        step=state.step + 1,
        steps=snapshot.steps,
        reason=state.reason,
        updated_at_ms=state.updated_ms,
        canary_stats=arm_stats(
            policy, "canary", f"{snapshot.model}@{state.canary}", snapshot.share, snapshot.canary_stats
        ),
        stable_stats=arm_stats(
            policy, "stable", f"{snapshot.model}@{state.stable}", 1.0 - snapshot.share, snapshot.stable_stats
        ),
    )


def arm_stats(policy: str, arm: str, target: str, weight: float, stats: ArmSummary) -> models_pb2.ArmStats:
    return models_pb2.ArmStats(
        policy=policy,
        arm=arm,
        target=target,
        weight=weight,
        requests=stats.requests,
        errors=stats.errors,
        ttft_p95_ms=stats.ttft_quantile_ms(0.95),
        mean_total_ms=stats.mean_total_ms,
        completion_tokens=stats.completion_tokens,
        cost_usd=stats.cost_usd,
    )
