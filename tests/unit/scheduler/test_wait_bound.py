"""The queue bound and retry-after from a pool's drain rate."""

from __future__ import annotations

import asyncio

import pytest

from headrace.runtime.errors import QueueFull
from services.scheduler.wait_bound import WaitBound
from tests.unit.scheduler.test_admission import add_worker, make_dispatcher, queued, req, settle


def bound(**overrides: float) -> WaitBound:
    return WaitBound(**{"max_wait_s": 5.0, "ceiling": 256, **overrides})  # type: ignore[arg-type]


def test_the_queue_holds_what_the_pool_drains_within_the_max_wait() -> None:
    wait = bound()
    wait.observe_hold(2.0)
    # 8 slots held 2 s each: 4 a second, 20 within 5 s.
    assert wait.drain_per_s(8) == 4.0
    assert wait.limit(8) == 20
    # Twice the slots, twice the queue; a slower engine, a shorter one.
    assert wait.limit(16) == 40
    slow = bound()
    slow.observe_hold(10.0)
    assert slow.limit(8) == 4


def test_the_bound_stays_within_one_and_the_ceiling() -> None:
    fast = bound(ceiling=50)
    fast.observe_hold(0.01)
    assert fast.limit(16) == 50
    crawling = bound()
    crawling.observe_hold(600.0)
    assert crawling.limit(1) == 1
    assert bound(ceiling=0).limit(4) == 0


def test_before_any_release_the_ceiling_applies() -> None:
    wait = bound()
    assert wait.hold_s is None and wait.drain_per_s(8) is None
    assert wait.limit(8) == 256
    assert wait.retry_after_s(8, 8) == 1.0


def test_without_capacity_the_ceiling_lets_waiters_ride_out_a_restart() -> None:
    wait = bound()
    wait.observe_hold(1.0)
    assert wait.limit(0) == 256


def test_retry_after_is_when_the_queue_ahead_has_drained() -> None:
    wait = bound(retry_after_max_s=30.0)
    wait.observe_hold(2.0)
    # 4 a second: 19 waiting -> the 20th place comes in 5 s.
    assert wait.expected_wait_s(19, 8) == 5.0
    assert wait.retry_after_s(19, 8) == 5.0
    assert wait.retry_after_s(0, 8) == 1.0  # never less than a second
    assert wait.retry_after_s(1000, 8) == 30.0  # never more than the cap


def test_the_hold_time_follows_the_engine_smoothly() -> None:
    wait = bound(smoothing=0.5)
    wait.observe_hold(1.0)
    wait.observe_hold(3.0)
    assert wait.hold_s == 2.0
    for _ in range(20):
        wait.observe_hold(3.0)
    assert wait.hold_s == pytest.approx(3.0, abs=1e-4)


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="max_wait_s"):
        bound(max_wait_s=0)
    with pytest.raises(ValueError, match="smoothing"):
        bound(smoothing=0)


# --- hooked into admission -----------------------------------------------------


async def test_admission_bounds_its_queue_by_expected_wait_and_says_when_to_retry() -> None:
    dispatcher = make_dispatcher(queue_limit=100, max_expected_wait_s=1.0)
    add_worker(dispatcher, capacity=2)
    admission = dispatcher.admission("pool")
    # A released lease is measured (an expired one would not be).
    first = await dispatcher.place(req())
    dispatcher.release(first.lease.lease_id)
    assert admission.wait_bound.hold_s is not None
    # Say leases are held 0.5 s: 2 slots drain 4 a second, 4 within 1 s.
    for _ in range(200):
        admission.wait_bound.observe_hold(0.5)
    held = [await dispatcher.place(req()) for _ in range(2)]
    waiters = [asyncio.create_task(dispatcher.place(req())) for _ in range(4)]
    await settle()
    assert queued(dispatcher) == 4
    with pytest.raises(QueueFull, match="full") as refused:
        await dispatcher.place(req())
    # The 4 ahead drain in 1 s, the refused one's place comes after 1.25 s.
    assert refused.value.retry_after_s == pytest.approx(1.25, rel=1e-3)
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    for placement in held:
        dispatcher.release(placement.lease.lease_id)
    await dispatcher.close()


async def test_the_drain_rate_counts_a_full_workers_slots() -> None:
    # A worker whose KV cache is full takes nothing new (capacity() is 0),
    # yet it drains its 4 sequences as fast as ever.
    dispatcher = make_dispatcher(queue_limit=100)
    add_worker(dispatcher, capacity=4, running=4, kv_cache_usage=1.0)
    admission = dispatcher.admission("pool")
    assert admission.capacity() == 0
    assert admission.nominal_slots() == 4
    await dispatcher.close()
