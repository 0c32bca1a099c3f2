from hypothesis import given, settings
from hypothesis import strategies as st

from services.scheduler.capacity import SlotModel
from tests.unit.scheduler.workers import worker

MODEL = SlotModel(default_slots=16, kv_soft_limit=0.8, kv_hard_limit=0.95, engine_queue_slots=0, batch_headroom=0.25)


def test_slots_come_from_the_reported_capacity_minus_what_is_outstanding() -> None:
    assert MODEL.free(worker("a", capacity=8)) == 8
    assert MODEL.free(worker("a", capacity=8, leases=3)) == 5
    # Work the engine runs beyond our leases (other replicas') counts too.
    assert MODEL.free(worker("a", capacity=8, running=2, leases=2)) == 6
    assert MODEL.free(worker("a", capacity=8, running=5, leases=2)) == 3
    # No capacity reported: the pool's default.
    assert MODEL.free(worker("a", capacity=0)) == 16


def test_a_filling_kv_cache_shrinks_the_slots_and_a_full_one_closes_them() -> None:
    free = [MODEL.free(worker("a", capacity=16, running=2, kv=kv)) for kv in (0.5, 0.8, 0.85, 0.9, 0.95, 0.99)]
    assert free[0] == free[1] == 14
    assert free[1] > free[2] > free[3] > free[4]
    assert free[4] == free[5] == 0


def test_an_engine_that_queues_gets_nothing_new() -> None:
    assert MODEL.free(worker("a", capacity=16, running=6, waiting=3)) == 0
    allowing = SlotModel(engine_queue_slots=2)
    # Up to two queued in the engine are fine; more close the worker.
    assert allowing.free(worker("a", capacity=16, running=6, waiting=1)) > 0
    assert allowing.free(worker("a", capacity=16, running=6, waiting=3)) == 0


def test_an_idle_worker_always_takes_one_even_with_a_stale_full_kv_reading() -> None:
    assert MODEL.free(worker("a", capacity=16, kv=1.0)) == 1
    assert MODEL.free(worker("a", capacity=16, kv=1.0, leases=1)) == 0


def test_batch_leaves_headroom_for_online_work() -> None:
    # 8 slots, 25% headroom: batch may fill 6, online all 8.
    assert MODEL.free_for_batch(worker("a", capacity=8, leases=5)) == 1
    assert MODEL.free_for_batch(worker("a", capacity=8, leases=6)) == 0
    assert MODEL.free(worker("a", capacity=8, leases=6)) == 2
    assert MODEL.free_for_batch(worker("a", capacity=8)) == 6


# No per-example deadline: the machine is shared, and this is about results, not speed.
@settings(deadline=None)
@given(
    capacity=st.integers(0, 256),
    running=st.integers(0, 300),
    waiting=st.integers(0, 300),
    leases=st.integers(0, 300),
    kv=st.floats(0, 1),
)
def test_free_slots_are_never_negative_and_batch_never_gets_more_than_online(
    capacity: int, running: int, waiting: int, leases: int, kv: float
) -> None:
    state = worker("a", capacity=capacity, running=running, waiting=waiting, leases=leases, kv=kv)
    assert MODEL.free(state) >= 0
    assert 0 <= MODEL.free_for_batch(state) <= max(1, MODEL.free(state))
    assert MODEL.free(state) <= max(1, (capacity or 16) - leases)
