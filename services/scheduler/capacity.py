"""How many new sequences a worker can take now, from what it reports.

A slot is not a fixed number per worker. It starts from the engine's own
capacity (vLLM: max_num_seqs), shrinks as the KV cache fills (a sequence
admitted into a full cache is preempted or queued inside the engine, where
the scheduler can no longer choose for it), and closes when the engine is
already queueing work. What is outstanding on the worker is our leases
(exact, at once) plus the work others placed there (as last reported).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from headrace.runtime.config import PoolSchedulingSettings
from services.scheduler.worker_roster import WorkerState


@dataclass(frozen=True)
class SlotModel:
    default_slots: int = 16
    kv_soft_limit: float = 0.85
    kv_hard_limit: float = 0.97
    engine_queue_slots: int = 0
    batch_headroom: float = 0.25

    @classmethod
    def from_settings(cls, settings: PoolSchedulingSettings) -> SlotModel:
        return cls(
            default_slots=settings.default_worker_slots,
            kv_soft_limit=settings.kv_cache_soft_limit,
            kv_hard_limit=settings.kv_cache_hard_limit,
            engine_queue_slots=settings.engine_queue_slots,
            batch_headroom=settings.batch_headroom,
        )

    def kv_factor(self, kv_cache_usage: float) -> float:
        """1 below the soft limit, 0 at the hard limit, linear between."""
        if kv_cache_usage <= self.kv_soft_limit:
            return 1.0
        if kv_cache_usage >= self.kv_hard_limit:
            return 0.0
        return (self.kv_hard_limit - kv_cache_usage) / (self.kv_hard_limit - self.kv_soft_limit)

    def limit(self, state: WorkerState) -> int:
        """Sequences the worker should hold now, ours and others' together."""
        load = state.load
        capacity = load.capacity or self.default_slots
        # (+1e-9: 8 x 0.25 must not come out as 1.999... and floor to 1.)
        limit = math.floor(capacity * self.kv_factor(load.kv_cache_usage) + 1e-9) + self.engine_queue_slots
        if load.waiting > self.engine_queue_slots:
            # The engine cannot fit what it has (KV cache or batch size):
            # nothing more until its queue drains.
            limit = min(limit, load.running + self.engine_queue_slots)
        return max(0, limit)

    def free(self, state: WorkerState) -> int:
        """New sequences the worker can take now: within its limit, and
        within this replica's share of it (replica_set.py). An idle worker
        always takes one: a stale high KV reading must not stall it for good."""
        outstanding = state.outstanding
        limit = self.limit(state)
        free = min(limit - outstanding, state.share.of(state.worker_id, limit) - state.leases)
        if outstanding == 0:
            free = max(free, 1)
        return max(0, free)

    def free_for_batch(self, state: WorkerState) -> int:
        """Slots batch work may take: what is left after keeping
        batch_headroom of the worker's slots free for online requests, so an
        online request arriving next finds a slot without waiting."""
        reserve = math.ceil(self.limit(state) * self.batch_headroom)
        free = max(0, self.free(state) - reserve)
        if state.outstanding == 0:
            # An idle worker is idle capacity, however small its limit.
            free = max(free, 1)
        return free
