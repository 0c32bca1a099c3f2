"""Worker states for the scheduler's unit tests."""

from __future__ import annotations

import time

from services.scheduler.worker_roster import LoadSnapshot, WorkerIdentity, WorkerState


def identity(worker_id: str, models: tuple[str, ...] = ("m@1",), pool: str = "pool") -> WorkerIdentity:
    return WorkerIdentity(
        worker_id, f"127.0.0.1:{50000 + sum(map(ord, worker_id))}", pool, frozenset(models), "synthetic"
    )


def worker(
    worker_id: str,
    *,
    running: int = 0,
    waiting: int = 0,
    capacity: int = 8,
    kv: float = 0.0,
    leases: int = 0,
    leased_tokens: int = 0,
    batch_leases: int = 0,
) -> WorkerState:
    state = WorkerState(
        identity=identity(worker_id),
        load=LoadSnapshot(running=running, waiting=waiting, capacity=capacity, kv_cache_usage=kv),
        reported_at=time.monotonic(),
    )
    state.leases = leases
    state.batch_leases = batch_leases
    state.leased_tokens = leased_tokens
    state.leases_at_report = leases
    return state
