"""A scheduler replica's share of each worker's slots (replica_set.py,
capacity.py): shares of replicas that agree on who is alive add up to the
worker's limit, so they cannot double-book it between them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.scheduler.capacity import SlotModel
from services.scheduler.replica_set import share_of
from tests.unit.scheduler.workers import worker

MODEL = SlotModel(default_slots=16, engine_queue_slots=0)


class FixedShare:
    def __init__(self, rank: int, live: int) -> None:
        self.rank, self.live = rank, live

    @property
    def replicas(self) -> int:
        return self.live

    def of(self, worker_id: str, limit: int) -> int:
        return share_of(limit, worker_id=worker_id, rank=self.rank, live=self.live)


@given(
    limit=st.integers(0, 512),
    live=st.integers(1, 16),
    worker_id=st.text(min_size=1, max_size=20),
)
def test_shares_of_the_live_replicas_add_up_to_the_limit(limit: int, live: int, worker_id: str) -> None:
    shares = [share_of(limit, worker_id=worker_id, rank=rank, live=live) for rank in range(live)]
    assert sum(shares) == limit
    assert max(shares) - min(shares) <= 1


def test_the_remainder_goes_to_different_replicas_for_different_workers() -> None:
    owners = {next(r for r in range(2) if share_of(1, worker_id=f"gen-{i}", rank=r, live=2)) for i in range(16)}
    assert owners == {0, 1}


def test_a_replica_leases_only_its_share_of_a_worker() -> None:
    state = worker("w", capacity=8)
    state.share = FixedShare(rank=0, live=2)
    assert MODEL.free(state) == 4
    state.leases = state.leases_at_report = 4
    state.load = type(state.load)(running=4, capacity=8)
    # The other half is the other replica's, though the engine runs only ours.
    assert MODEL.free(state) == 0
    # Alone again (the other replica died): the whole worker, minus what runs.
    state.share = FixedShare(rank=0, live=1)
    assert MODEL.free(state) == 4


def test_a_dead_replicas_running_work_still_counts_against_the_survivor() -> None:
    # The survivor holds 2 leases; the engine also runs 3 of the dead replica's.
    state = worker("w", capacity=8, running=5, leases=2)
    state.share = FixedShare(rank=0, live=1)
    assert MODEL.free(state) == 3


def test_the_idle_rule_still_lets_a_replica_without_share_serve_an_idle_worker() -> None:
    # One slot, two replicas: one of them has no share of this worker, but
    # an idle worker takes one from anyone (the bounded double-booking).
    shares = [FixedShare(rank, 2) for rank in range(2)]
    free = []
    for share in shares:
        state = worker("w", capacity=1)
        state.share = share
        free.append(MODEL.free(state))
    assert free == [1, 1]


@given(capacity=st.integers(1, 256), live=st.integers(1, 8), worker_id=st.text(min_size=1, max_size=20))
def test_while_online_work_is_around_the_replicas_together_hold_the_batch_share(
    capacity: int, live: int, worker_id: str
) -> None:
    # Each replica alone would give batch half its own part of the worker;
    # together they must give it half the worker (at least one), not each.
    batch = SlotModel(default_slots=16, batch_share_while_online=0.5)
    parts = []
    for rank in range(live):
        state = worker(worker_id, capacity=capacity)
        state.share = FixedShare(rank, live)
        parts.append(batch.free_for_batch(state, online_active=True))
    assert sum(parts) == max(1, capacity // 2), parts


def test_two_replicas_give_batch_half_of_an_8_slot_worker_while_online_work_is_around() -> None:
    batch = SlotModel(default_slots=16, batch_share_while_online=0.5)
    parts = []
    for rank in range(2):
        state = worker("cheap-0", capacity=8)
        state.share = FixedShare(rank, 2)
        parts.append(batch.free_for_batch(state, online_active=True))
    # Before: 4 each, all 8 slots batch's.
    assert parts == [2, 2]


def test_the_autoscaler_of_one_replica_counts_the_whole_pools_demand() -> None:
    """Each replica sees its own queue and leases only: its autoscaling
    reading scales its queue by the replicas alive and counts busy slots
    as the engines report them."""
    from services.scheduler.dispatcher import Dispatcher
    from services.scheduler.leases import LeaseTable
    from services.scheduler.worker_roster import WorkerRoster
    from tests.unit.scheduler.workers import identity

    roster = WorkerRoster(stale_after_s=3.0, share=FixedShare(rank=0, live=2))
    dispatcher = Dispatcher(registry=roster, leases=LeaseTable(ttl_s=30.0))
    assert roster.replicas_live() == 2
    # The engine runs 6 sequences, none of them ours: the other replica's.
    roster.report(identity("w", pool="pool"), type(worker("w").load)(running=6, capacity=8), draining=False)
    seen: dict[str, float] = {}
    real = dispatcher.autoscaling.evaluate

    def spy(pool: str, **reading: float) -> object:
        seen.update(reading)
        return real(pool, **reading)  # type: ignore[arg-type]

    dispatcher.autoscaling.evaluate = spy  # type: ignore[method-assign,assignment]
    dispatcher.autoscale("pool", 0.0)
    assert seen["leased"] == 6


def test_a_draining_worker_does_not_count_in_the_autoscalers_reading() -> None:
    """A retired worker drains its leases: it holds no slots for new work,
    so it must not halve the slots per worker (that asked it back)."""
    from services.scheduler.dispatcher import Dispatcher
    from services.scheduler.leases import LeaseTable
    from services.scheduler.worker_roster import WorkerRoster
    from tests.unit.scheduler.workers import identity

    roster = WorkerRoster(stale_after_s=3.0, share=FixedShare(rank=0, live=1))
    dispatcher = Dispatcher(registry=roster, leases=LeaseTable(ttl_s=30.0))
    load = type(worker("w").load)
    roster.report(identity("w1", pool="pool"), load(running=1, capacity=4), draining=False)
    roster.report(identity("w2", pool="pool"), load(running=1, capacity=4), draining=True)
    seen: dict[str, float] = {}
    real = dispatcher.autoscaling.evaluate

    def spy(pool: str, **reading: float) -> object:
        seen.update(reading)
        return real(pool, **reading)  # type: ignore[arg-type]

    dispatcher.autoscaling.evaluate = spy  # type: ignore[method-assign,assignment]
    dispatcher.autoscale("pool", 0.0)
    assert seen["workers"] == 1
    assert seen["slots_per_worker"] == 4
