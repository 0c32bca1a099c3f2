"""Scheduler replicas as `headrace up` runs them (real processes: Redis,
two scheduler replicas, synthetic workers, batch consumers, router), one
killed with SIGKILL under load through the router (bench/failover.py's
run, shorter)."""

from __future__ import annotations

import math

import pytest

from bench.failover import REPLICAS, SLOTS, WORKERS, mesh_config, run_failover
from bench.harness import running_mesh

pytestmark = pytest.mark.slow


async def test_killing_a_replica_under_load_loses_nothing_and_the_survivor_takes_the_pool() -> None:
    with running_mesh(mesh_config(), timeout_s=180) as mesh:
        schedulers = [p for p in mesh.processes if p.module == "services.scheduler"]
        assert [p.name for p in schedulers] == [f"scheduler-{i}" for i in range(REPLICAS)]
        result = await run_failover(mesh, warmup_s=2.0, after_s=4.0, concurrency=2 * WORKERS * SLOTS)

    # No admitted request lost: those queued on the dead replica were placed by the survivor.
    assert result.requests > 0 and result.lost == 0, result
    assert result.started_after_kill_ok > 0, result
    # The survivor ends up leasing the whole pool (the dead replica's share too) ...
    assert result.recovered_s is not None and result.survivor_leases_max == WORKERS * SLOTS, result
    # ... and double-booking stays within its bound: none while both live
    # (their shares sum to each worker's limit); after the kill at most the
    # dead replica's share of each worker (docs/scheduler.md, "Consistency").
    assert result.extra_slots_before_kill == 0, result
    assert result.extra_slots_after_kill <= result.extra_slots_bound == WORKERS * math.ceil(SLOTS / REPLICAS), result
    assert result.status_after_kill == {"scheduler-0": "DOWN", "scheduler-1": "SERVING"}
