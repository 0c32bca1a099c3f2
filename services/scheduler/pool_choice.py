"""Which pool serves a request when a model version has several (a GPU pool
and a CPU pool, say): the cheapest per token while its expected queue wait
keeps the pool's SLO, else the one that answers soonest. Batch work waits by
design, so it goes to the cheapest pool that has workers. docs/autoscaling.md
works an example through.

Cost per token of a pool = price_per_hour / 3600 / (tokens per second one
of its workers delivers). The throughput is the pool's configured
`throughput_tokens_per_s` (from a benchmark of that engine on that
hardware), else the best its workers have reported while running (which
under-reads until they have been busy); a pool with neither counts as dear
(it is tried last)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def usd_per_million_tokens(price_per_hour: float, tokens_per_s: float | None) -> float:
    """A pool's cost per token (inf: throughput unknown, tried last)."""
    if not tokens_per_s or tokens_per_s <= 0:
        return math.inf
    return price_per_hour / 3600.0 / tokens_per_s * 1e6


@dataclass(frozen=True)
class PoolOption:
    pool: str
    price_per_hour: float
    # Tokens/s one worker delivers (measured, else configured); None: unknown.
    tokens_per_s: float | None
    workers: int
    # Seconds a request arriving now would wait for a slot (0: one is free);
    # None: no estimate (nothing measured yet), taken as no wait if it has workers.
    expected_wait_s: float | None
    # The wait users should not feel (autoscale.queue_wait_slo_s).
    wait_slo_s: float

    @property
    def usd_per_million_tokens(self) -> float:
        return usd_per_million_tokens(self.price_per_hour, self.tokens_per_s)

    @property
    def wait_s(self) -> float:
        if self.workers == 0:
            return math.inf
        return 0.0 if self.expected_wait_s is None else self.expected_wait_s


@dataclass(frozen=True)
class PoolChoice:
    pool: str
    # Why: "cheapest", "spill" (the cheaper ones would break their SLO),
    # "soonest" (every pool would; the least wait), "batch-cheapest".
    reason: str
    # Cheaper pools passed over because of their wait (for their autoscaler).
    passed_over: tuple[str, ...] = ()


def choose_pool(options: Sequence[PoolOption], *, batch: bool) -> PoolChoice:
    if not options:
        raise ValueError("no pool to choose from")
    by_cost = sorted(options, key=lambda o: (o.usd_per_million_tokens, o.pool))
    with_workers = [o for o in by_cost if o.workers > 0]
    if batch:
        # Batch has its completion window: the cheapest capacity there is.
        return PoolChoice((with_workers or by_cost)[0].pool, "batch-cheapest")
    passed: list[str] = []
    for option in with_workers:
        if option.wait_s <= option.wait_slo_s:
            return PoolChoice(option.pool, "spill" if passed else "cheapest", tuple(passed))
        passed.append(option.pool)
    if not with_workers:
        # Nothing runs anywhere: the cheapest, where the first worker will start.
        return PoolChoice(by_cost[0].pool, "cheapest")
    soonest = min(with_workers, key=lambda o: (o.wait_s, o.usd_per_million_tokens))
    return PoolChoice(soonest.pool, "soonest", tuple(p for p in passed if p != soonest.pool))
