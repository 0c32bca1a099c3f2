"""How many new sequences a worker can take now, from what it reports.

A slot is not a fixed number per worker. It starts from the engine's own
capacity (vLLM: max_num_seqs), shrinks as the KV cache fills (a sequence
admitted into a full cache is preempted or queued inside the engine, where
the scheduler can no longer choose for it), and closes when the engine is
already queueing work. What is outstanding on the worker is our leases
(exact, at once) plus the work others placed there (as last reported).

Online and batch work share the slots (docs/scheduler.md, "One owner of
capacity"): batch alone may fill a worker, plus batch_queue_ahead rows
waiting in its engine; while online work is around, batch holds at most
batch_share_while_online of each worker's slots. Batch leases never keep
online work off a worker: engines run online requests ahead of batch rows
(priority), so online work is placed while online work alone fits.
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
    batch_share_while_online: float = 0.5
    batch_queue_ahead: int = 0

    @classmethod
    def from_settings(cls, settings: PoolSchedulingSettings) -> SlotModel:
        return cls(
            default_slots=settings.default_worker_slots,
            kv_soft_limit=settings.kv_cache_soft_limit,
            kv_hard_limit=settings.kv_cache_hard_limit,
            engine_queue_slots=settings.engine_queue_slots,
            batch_share_while_online=settings.batch_share_while_online,
            batch_queue_ahead=settings.batch_queue_ahead,
        )

    def kv_factor(self, kv_cache_usage: float) -> float:
        """1 below the soft limit, 0 at the hard limit, linear between."""
        if kv_cache_usage <= self.kv_soft_limit:
            return 1.0
        if kv_cache_usage >= self.kv_hard_limit:
            return 0.0
        return (self.kv_hard_limit - kv_cache_usage) / (self.kv_hard_limit - self.kv_soft_limit)

    @staticmethod
    def kv_usage_now(state: WorkerState) -> float:
        """The KV cache's use as last reported, less what the sequences
        released since then held (at the report's average per sequence).
        A finished sequence frees its blocks at once, but the report says
        so only up to an interval later: read as is, a worker reported full
        took nothing until its next report, however many of its sequences
        had ended (one synthetic worker, whose use is its slots', carried
        9 requests/s with a queue instead of 11.8: a slot freed stayed
        empty 0.25 s on average). Sequences granted since the report are
        not added: their use is what the next report tells."""
        load = state.load
        in_engine = load.running + load.waiting
        if in_engine <= 0 or state.outstanding >= in_engine:
            return load.kv_cache_usage
        return load.kv_cache_usage * state.outstanding / in_engine

    def limit(self, state: WorkerState, *, kv: bool = True, queued_by_design: int = 0) -> int:
        """Sequences the worker should hold now, ours and others' together
        (kv=False: as if its KV cache had room, see free_for_online;
        queued_by_design: sequences we put in its engine's queue on purpose,
        which say nothing of what it can fit)."""
        load = state.load
        capacity = load.capacity or self.default_slots
        kv_factor = self.kv_factor(self.kv_usage_now(state)) if kv else 1.0
        # (+1e-9: 8 x 0.25 must not come out as 1.999... and floor to 1.)
        limit = math.floor(capacity * kv_factor + 1e-9) + self.engine_queue_slots
        if load.waiting > self.engine_queue_slots + queued_by_design:
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

    def free_for_online(self, state: WorkerState) -> int:
        """Slots an online request may take: the free ones, or, with batch
        rows on the worker, room while the online work there (and others'
        work we cannot classify) stays within its width. The engine runs
        online requests first, so one waits at most for a running sequence
        to end, never behind the batch rows queued there."""
        free = self.free(state)
        if state.batch_leases:
            # A KV cache full of batch sequences is room too: the engine
            # preempts batch sequences for online ones (vLLM's priority
            # policy recomputes them later).
            online = state.outstanding - state.batch_leases
            free = max(free, self.limit(state, kv=False) - online)
        return max(0, free)

    def free_for_batch(self, state: WorkerState, *, online_active: bool) -> int:
        """Slots a batch row may take. Alone, batch gets the whole worker and
        batch_queue_ahead rows more in its engine's queue; while online work
        is around, at most batch_share_while_online of its slots (at least
        one), so online requests keep finding room."""
        if not online_active:
            # Its queue holds the rows leased ahead: a reading taken between
            # one row ending and the next starting (running below capacity,
            # rows waiting) is not an engine that cannot fit them.
            limit = self.limit(state, queued_by_design=self.batch_queue_ahead)
            return max(0, limit + self.batch_queue_ahead - state.outstanding, self.free(state))
        share = max(1, math.floor(self.limit(state) * self.batch_share_while_online + 1e-9))
        # The worker's batch share, split between the replicas alive as its
        # slots are (replica_set.py): each leases only its part, so together
        # they hold the share, however many they are. (Each taking the whole
        # share from its own part of the slots gave batch the whole worker.)
        mine = state.share.of(state.worker_id, share)
        return max(0, min(self.free(state), mine - state.batch_leases))
