"""Placement policies behind one protocol: given a request and the workers
that may take it now, pick one. Every policy has the same async signature
(tests/unit/scheduler/test_placement.py holds each to it); a pool's policy
is named in its config (scheduler.pools.NAME.policy).

Candidates are never empty, and every candidate is fresh, healthy, not
draining, serves the request's model version, is not excluded by it and
has a free slot: policies only decide *which*, not *whether*.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from headrace.runtime.config import PoolSchedulingSettings
from services.scheduler import metrics
from services.scheduler.hash_ring import RingCache, bounded_choice, load_bound, stable_hash64
from services.scheduler.worker_roster import WorkerState


@dataclass(frozen=True)
class PlacementRequest:
    request_id: str
    model_version: str
    tenant: str
    # Lower runs first: 0 interactive, 1 standard, 2 batch.
    priority: int
    session_id: str = ""
    # Hashes of the prompt's leading blocks, shortest prefix first
    # (headrace/request_rules/prefix_hashing.py).
    prefix_hashes: tuple[int, ...] = ()
    prompt_tokens: int = 0
    max_tokens: int = 0
    exclude: frozenset[str] = frozenset()
    # Only this worker (empty: any): a batch consumer asks for room on the
    # worker it runs beside.
    worker_id: str = ""
    # A slot free now or none: never queued (a placement made while the
    # router asks the cache, given back on a hit).
    only_if_free: bool = False


class PlacementPolicy(Protocol):
    name: str

    async def choose(self, request: PlacementRequest, candidates: Sequence[WorkerState]) -> WorkerState | None:
        """One of candidates (never empty), or None to leave the request
        queued until the next scheduling step."""
        ...


def _least_tokens_key(state: WorkerState) -> tuple[int, int, str]:
    return (state.outstanding_tokens, state.outstanding, state.worker_id)


class LeastLoadPolicy:
    """The worker with the fewest outstanding sequences."""

    name = "least_load"

    async def choose(self, request: PlacementRequest, candidates: Sequence[WorkerState]) -> WorkerState | None:
        return min(candidates, key=lambda s: (s.outstanding, s.leased_tokens, s.worker_id))


class LeastOutstandingTokensPolicy:
    """The worker with the fewest outstanding tokens (prompt + completion
    budgets): a worker holding a few long requests counts as busier than
    one holding many short ones."""

    name = "least_outstanding_tokens"

    async def choose(self, request: PlacementRequest, candidates: Sequence[WorkerState]) -> WorkerState | None:
        return min(candidates, key=_least_tokens_key)


class PowerOfTwoPolicy:
    """Two candidates at random, the less loaded (by outstanding tokens) of
    the two: near least-load balance without herding, when many scheduler
    replicas act on the same slightly stale view."""

    name = "power_of_two"

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    async def choose(self, request: PlacementRequest, candidates: Sequence[WorkerState]) -> WorkerState | None:
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._rng.sample(list(candidates), 2)
        return min(first, second, key=_least_tokens_key)


class RoundRobinPolicy:
    """Each worker in turn, blind to load and content: the baseline the
    benchmark compares prefix affinity with."""

    name = "round_robin"

    def __init__(self) -> None:
        self._turn = 0

    async def choose(self, request: PlacementRequest, candidates: Sequence[WorkerState]) -> WorkerState | None:
        ordered = sorted(candidates, key=lambda s: s.worker_id)
        chosen = ordered[self._turn % len(ordered)]
        self._turn += 1
        return chosen


class PrefixAffinityPolicy:
    """Requests whose prompts start alike go to the same worker, whose KV
    cache then holds their common prefix. The key is the hash of the first
    `key_blocks` prompt blocks (fewer for a shorter prompt), placed on a
    consistent-hash ring with bounded load: a hot prefix spills over to the
    next worker instead of swamping its own. A request without prefix
    hashes goes to the worker with the fewest outstanding tokens."""

    name = "prefix_affinity"

    def __init__(self, *, key_blocks: int, load_factor: float, load_slack: int) -> None:
        self._key_blocks = key_blocks
        self._load_factor = load_factor
        self._load_slack = load_slack
        self._rings = RingCache()

    async def choose(self, request: PlacementRequest, candidates: Sequence[WorkerState]) -> WorkerState | None:
        if not request.prefix_hashes:
            metrics.AFFINITY.labels(policy=self.name, outcome="no_key").inc()
            return min(candidates, key=_least_tokens_key)
        key = request.prefix_hashes[min(self._key_blocks, len(request.prefix_hashes)) - 1]
        ring = self._rings.ring(frozenset(s.worker_id for s in candidates))
        chosen, home = bounded_choice(ring, key, candidates, self._load_factor, self._load_slack)
        metrics.AFFINITY.labels(policy=self.name, outcome="home" if home else "spill").inc()
        return chosen


class SessionAffinityPolicy:
    """A session sticks to its worker (its KV cache holds the conversation)
    while that worker is healthy (a candidate at all) and not overloaded
    (within the load bound); otherwise it moves, and sticks to the new one.
    A session's first worker comes from the consistent-hash ring, so
    scheduler replicas agree on it without sharing state. The table of
    sessions is bounded: the least recently seen are forgotten first."""

    name = "session_affinity"

    def __init__(self, *, load_factor: float, load_slack: int, max_sessions: int = 100_000) -> None:
        self._load_factor = load_factor
        self._load_slack = load_slack
        self._max_sessions = max_sessions
        self._pinned: OrderedDict[str, str] = OrderedDict()
        self._rings = RingCache()

    def __len__(self) -> int:
        return len(self._pinned)

    async def choose(self, request: PlacementRequest, candidates: Sequence[WorkerState]) -> WorkerState | None:
        session = request.session_id
        if not session:
            metrics.AFFINITY.labels(policy=self.name, outcome="no_key").inc()
            return min(candidates, key=_least_tokens_key)
        pinned_id = self._pinned.get(session)
        if pinned_id is not None:
            bound = load_bound(candidates, self._load_factor, self._load_slack)
            for state in candidates:
                if state.worker_id == pinned_id and state.outstanding + 1 <= bound:
                    self._pinned.move_to_end(session)
                    metrics.AFFINITY.labels(policy=self.name, outcome="home").inc()
                    return state
        ring = self._rings.ring(frozenset(s.worker_id for s in candidates))
        chosen, home = bounded_choice(ring, stable_hash64(session), candidates, self._load_factor, self._load_slack)
        metrics.AFFINITY.labels(policy=self.name, outcome="home" if home and pinned_id is None else "spill").inc()
        self._pinned[session] = chosen.worker_id
        self._pinned.move_to_end(session)
        while len(self._pinned) > self._max_sessions:
            self._pinned.popitem(last=False)
        return chosen


PolicyFactory = Callable[[PoolSchedulingSettings, random.Random], PlacementPolicy]

# Every policy a pool may name, built from its settings (the Literal in
# headrace/runtime/config.py lists the same names; a unit test checks).
POLICIES: dict[str, PolicyFactory] = {
    LeastLoadPolicy.name: lambda settings, rng: LeastLoadPolicy(),
    LeastOutstandingTokensPolicy.name: lambda settings, rng: LeastOutstandingTokensPolicy(),
    PowerOfTwoPolicy.name: lambda settings, rng: PowerOfTwoPolicy(rng),
    RoundRobinPolicy.name: lambda settings, rng: RoundRobinPolicy(),
    PrefixAffinityPolicy.name: lambda settings, rng: PrefixAffinityPolicy(
        key_blocks=settings.prefix_key_blocks,
        load_factor=settings.affinity_load_factor,
        load_slack=settings.affinity_load_slack,
    ),
    SessionAffinityPolicy.name: lambda settings, rng: SessionAffinityPolicy(
        load_factor=settings.affinity_load_factor, load_slack=settings.affinity_load_slack
    ),
}


def build_policy(settings: PoolSchedulingSettings, rng: random.Random | None = None) -> PlacementPolicy:
    return POLICIES[settings.policy](settings, rng or random.Random())
