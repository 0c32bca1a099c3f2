from hypothesis import given, settings
from hypothesis import strategies as st

from services.scheduler.capacity import SlotModel
from tests.unit.scheduler.workers import worker

MODEL = SlotModel(
    default_slots=16, kv_soft_limit=0.8, kv_hard_limit=0.95, engine_queue_slots=0, batch_share_while_online=0.5
)
QUEUEING = SlotModel(batch_share_while_online=0.5, batch_queue_ahead=4)


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


def test_batch_alone_gets_the_whole_worker_and_its_queue_ahead() -> None:
    assert MODEL.free_for_batch(worker("a", capacity=8), online_active=False) == 8
    assert MODEL.free_for_batch(worker("a", capacity=8, leases=7, batch_leases=7), online_active=False) == 1
    assert QUEUEING.free_for_batch(worker("a", capacity=8, leases=8, batch_leases=8), online_active=False) == 4
    # Rows queued in the engine: its limit closes to what runs, not the queue-ahead.
    queued = worker("a", capacity=8, running=8, waiting=4, leases=12, batch_leases=12)
    assert QUEUEING.free_for_batch(queued, online_active=False) == 0
    # Not while online work is around.
    assert QUEUEING.free_for_batch(worker("a", capacity=8, leases=4, batch_leases=4), online_active=True) == 0


def test_rows_queued_ahead_by_design_do_not_read_as_an_engine_that_cannot_fit() -> None:
    # A reading between one wave of rows ending and the next starting: 5
    # running, the 3 rows leased ahead waiting. The worker still has room
    # for its width plus the queue-ahead, not just for what ran then.
    between = worker("a", capacity=8, running=5, waiting=3, leases=8, batch_leases=8)
    assert QUEUEING.free_for_batch(between, online_active=False) == 4
    # More waiting than was queued ahead: the engine cannot fit its work.
    overfull = worker("a", capacity=8, running=5, waiting=6, leases=8, batch_leases=8)
    assert QUEUEING.free_for_batch(overfull, online_active=False) == 0


def test_while_online_work_is_around_batch_holds_at_most_its_share() -> None:
    # 8 slots, share 0.5: batch may hold 4 while online work is around.
    assert MODEL.free_for_batch(worker("a", capacity=8), online_active=True) == 4
    assert MODEL.free_for_batch(worker("a", capacity=8, leases=3, batch_leases=3), online_active=True) == 1
    assert MODEL.free_for_batch(worker("a", capacity=8, leases=4, batch_leases=4), online_active=True) == 0
    # Online leases use their own slots, not batch's share.
    assert MODEL.free_for_batch(worker("a", capacity=8, leases=5, batch_leases=2), online_active=True) == 2
    # A worker of one slot: batch may still hold it.
    assert MODEL.free_for_batch(worker("a", capacity=1), online_active=True) == 1


def test_batch_leases_never_keep_online_work_off_a_worker() -> None:
    full_of_batch = worker("a", capacity=4, running=4, waiting=4, leases=8, batch_leases=8)
    assert MODEL.free(full_of_batch) == 0
    # The engine runs online work first: room for as much as fits its width.
    assert MODEL.free_for_online(full_of_batch) == 4
    mixed = worker("a", capacity=4, leases=4, batch_leases=1)
    assert MODEL.free_for_online(mixed) == 1
    # A KV cache full of batch sequences: the engine preempts them for online work.
    kv_full_of_batch = worker("a", capacity=4, running=4, leases=4, batch_leases=4, kv=1.0)
    assert MODEL.free(kv_full_of_batch) == 0 and MODEL.free_for_online(kv_full_of_batch) == 4
    assert MODEL.free_for_online(worker("a", capacity=4, leases=4)) == 0


# No per-example deadline: the machine is shared, and this is about results, not speed.
@settings(deadline=None)
@given(
    capacity=st.integers(0, 256),
    running=st.integers(0, 300),
    waiting=st.integers(0, 300),
    leases=st.integers(0, 300),
    kv=st.floats(0, 1),
    batch=st.integers(0, 300),
)
def test_free_slots_are_never_negative_and_batch_never_gets_more_than_online(
    capacity: int, running: int, waiting: int, leases: int, kv: float, batch: int
) -> None:
    batch_leases = min(batch, leases)
    state = worker(
        "a", capacity=capacity, running=running, waiting=waiting, leases=leases, kv=kv, batch_leases=batch_leases
    )
    assert MODEL.free(state) >= 0
    for online_active in (False, True):
        assert 0 <= MODEL.free_for_batch(state, online_active=online_active) <= MODEL.free(state)
    assert MODEL.free_for_batch(state, online_active=True) <= MODEL.free_for_batch(state, online_active=False)
    assert MODEL.free_for_online(state) >= MODEL.free(state)
    assert MODEL.free_for_online(state) <= max(MODEL.free(state), MODEL.limit(state, kv=False))
    assert MODEL.free(state) <= max(1, (capacity or 16) - leases)


def test_a_slot_released_after_a_full_report_is_free_before_the_next_report() -> None:
    # Reported: 4 of 4 running, the KV cache full (a synthetic engine's use
    # is its slots'; a vLLM one near its limit). Our 4 leases were counted.
    full = worker("a", capacity=4, running=4, kv=1.0, leases=4)
    assert MODEL.free(full) == 0
    # One sequence ends and its lease comes back before the next report:
    # its KV blocks are free, so is its slot.
    full.leases = 3
    assert MODEL.free(full) == 1
    # Leases granted since the report do not make the reading look emptier.
    busy = worker("a", capacity=16, running=4, kv=0.9, leases=4)
    before = MODEL.free(busy)
    busy.leases = 6
    assert MODEL.free(busy) <= before
