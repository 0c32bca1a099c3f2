"""Sizing pools that serve one model version together (a cheap pool that
takes the work first and a dearer one it spills to; pool_choice.py): the
cheaper pool grows first.

Placement spills to the dearer pool while the cheap one's queue would break
its SLO, as it does during a ramp while the cheap pool's new workers start.
Sized alone, each pool would answer that spill by growing, and at the
peak both run at max (seen in bench-autoscale's two-pools case: 1.08x the
worker-seconds of static max, dearer per request than one pool). Sized
together, the group's demand is poured into the pools cheapest first, each
taking what it can carry at its max; a dearer pool sizes only for what is
left, and its own SLO and lead-time rules wait while a cheaper pool can
still grow or has workers still starting (its passed-over waits already
tell the cheaper one, and the queue a cheap pool's cold start leaves is
its coming workers' to take: answered by the dear pool, a 20 s ramp grew
it to 3 workers where 1 carried the spill)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class GroupMember:
    pool: str
    # Sequences queued and leased in the pool now.
    demand: float
    # Sequences the pool carries at its max workers and target utilisation.
    carries_at_max: float
    # Whether its decision is already at max_workers (it cannot grow more).
    at_max: bool
    # Workers it asked for are not serving yet, within their cold start.
    starting: bool = False


@dataclass(frozen=True)
class SharedSizing:
    # The demand this pool sizes for (its share of the group's).
    demand: float
    # A cheaper pool of the group can still grow, or is growing: leave SLO
    # breaches and rises to it.
    defer_to_cheaper: bool


def share_demand(members_cheapest_first: Sequence[GroupMember]) -> dict[str, SharedSizing]:
    """Each pool's share of its group's demand, cheapest first."""
    left = sum(m.demand for m in members_cheapest_first)
    shares: dict[str, SharedSizing] = {}
    cheaper_can_grow = False
    for index, member in enumerate(members_cheapest_first):
        last = index == len(members_cheapest_first) - 1
        take = left if last else min(left, member.carries_at_max)
        shares[member.pool] = SharedSizing(take, cheaper_can_grow)
        left -= take
        cheaper_can_grow = cheaper_can_grow or not member.at_max or member.starting
    return shares
