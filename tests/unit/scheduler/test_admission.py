"""Admission: Place waits for a slot in a bounded queue, and every way a
wait can end (leased, refused, pushed out, out of time, cancelled, no
worker left) leaves no place or lease behind."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import pytest
from prometheus_client import REGISTRY

from headrace.runtime.config import PoolSchedulingSettings
from headrace.runtime.errors import DeadlineExceeded, NoWorkerAvailable, QueueFull
from services.scheduler.admission import Placement
from services.scheduler.dispatcher import Dispatcher, PoolDirectory
from services.scheduler.leases import LeaseTable
from services.scheduler.placement import PlacementRequest
from services.scheduler.worker_roster import LoadSnapshot, WorkerRoster
from tests.unit.scheduler.workers import identity

INTERACTIVE, STANDARD, BATCH = 0, 1, 2


def make_dispatcher(
    *, ttl_s: float = 30.0, weights: dict[str, float] | None = None, orphan_grace_s: float = 3.0, **pool: object
) -> Dispatcher:
    settings = PoolSchedulingSettings.model_validate({"policy": "least_load", **pool})
    return Dispatcher(
        registry=WorkerRoster(stale_after_s=30.0),
        leases=LeaseTable(ttl_s=ttl_s),
        pools=PoolDirectory(
            model_pools={"m@1": "pool"}, pool_settings={"pool": settings}, tenant_weights=weights or {}
        ),
        orphan_grace_s=orphan_grace_s,
    )


@pytest.fixture
def dispatcher() -> Iterator[Dispatcher]:
    yield make_dispatcher(queue_limit=4)


_ids = iter(range(10**9))


def req(priority: int = STANDARD, tenant: str = "t", model: str = "m@1") -> PlacementRequest:
    return PlacementRequest(
        request_id=f"r{next(_ids)}", model_version=model, tenant=tenant, priority=priority, max_tokens=16
    )


def add_worker(dispatcher: Dispatcher, name: str = "w", capacity: int = 1, **load: object) -> None:
    dispatcher.report(identity(name), LoadSnapshot(capacity=capacity, **load), draining=False)  # type: ignore[arg-type]


async def settle() -> None:
    """Let the pool's scheduling task and the waiting calls run."""
    for _ in range(10):
        await asyncio.sleep(0)


def queued(dispatcher: Dispatcher) -> int:
    return len(dispatcher.admission("pool").queue)


async def test_place_waits_for_a_slot_and_gets_the_released_one(dispatcher: Dispatcher) -> None:
    add_worker(dispatcher, capacity=2)
    first = await dispatcher.place(req())
    await dispatcher.place(req())
    waiting = asyncio.create_task(dispatcher.place(req()))
    await settle()
    assert not waiting.done() and queued(dispatcher) == 1
    dispatcher.release(first.lease.lease_id)
    third = await asyncio.wait_for(waiting, 1.0)
    assert third.lease.worker_id == "w" and third.queue_ms > 0
    assert queued(dispatcher) == 0 and len(dispatcher.leases) == 2
    await dispatcher.close()


async def test_a_full_queue_answers_at_once_with_a_retry_after_hint(dispatcher: Dispatcher) -> None:
    add_worker(dispatcher)
    await dispatcher.place(req())
    waiters = [asyncio.create_task(dispatcher.place(req())) for _ in range(4)]
    await settle()
    assert queued(dispatcher) == 4
    with pytest.raises(QueueFull, match="full") as refused:
        await asyncio.wait_for(dispatcher.place(req()), 0.5)
    assert refused.value.retry_after_s is not None and refused.value.retry_after_s >= 1
    assert queued(dispatcher) == 4
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    await dispatcher.close()


async def test_only_if_free_takes_a_free_slot_or_answers_at_once_without_queueing(dispatcher: Dispatcher) -> None:
    add_worker(dispatcher)
    ahead = replace(req(INTERACTIVE), only_if_free=True)
    granted = await dispatcher.place(ahead)
    assert granted.lease.worker_id == "w"
    rejected = REGISTRY.get_sample_value(
        "headrace_scheduler_rejections_total", {"pool": "pool", "priority": "interactive", "reason": "queue_full"}
    )
    with pytest.raises(QueueFull, match="only_if_free"):
        await asyncio.wait_for(dispatcher.place(replace(req(INTERACTIVE), only_if_free=True)), 0.5)
    # Not queued, and not a rejection: the router asks again, queueing, on a cache miss.
    assert queued(dispatcher) == 0
    assert (
        REGISTRY.get_sample_value(
            "headrace_scheduler_rejections_total", {"pool": "pool", "priority": "interactive", "reason": "queue_full"}
        )
        == rejected
    )
    await dispatcher.close()


async def test_the_callers_deadline_ends_the_wait_and_frees_its_place(dispatcher: Dispatcher) -> None:
    add_worker(dispatcher)
    held = await dispatcher.place(req())
    with pytest.raises(DeadlineExceeded, match="before the deadline"):
        await dispatcher.place(req(), timeout_s=0.1)
    assert queued(dispatcher) == 0
    dispatcher.release(held.lease.lease_id)
    # The slot went to no one: the next caller gets it.
    assert (await dispatcher.place(req(), timeout_s=1.0)).lease.worker_id == "w"
    await dispatcher.close()


async def test_the_pools_longest_wait_bounds_a_caller_without_deadline() -> None:
    dispatcher = make_dispatcher(max_queue_wait_s=0.1)
    add_worker(dispatcher)
    await dispatcher.place(req())
    with pytest.raises(QueueFull, match="max_queue_wait_s"):
        await dispatcher.place(req())
    assert queued(dispatcher) == 0
    await dispatcher.close()


async def test_a_cancelled_place_frees_its_place(dispatcher: Dispatcher) -> None:
    add_worker(dispatcher)
    held = await dispatcher.place(req())
    waiting = asyncio.create_task(dispatcher.place(req()))
    await settle()
    assert queued(dispatcher) == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert queued(dispatcher) == 0
    dispatcher.release(held.lease.lease_id)
    await settle()
    assert len(dispatcher.leases) == 0
    await dispatcher.close()


async def test_a_lease_granted_as_its_caller_leaves_is_released(dispatcher: Dispatcher) -> None:
    add_worker(dispatcher)
    held = await dispatcher.place(req())
    waiting = asyncio.create_task(dispatcher.place(req()))
    await settle()
    dispatcher.leases.release(held.lease.lease_id, dispatcher.registry.get("w"))
    # The scheduling step grants the slot; the caller is cancelled before
    # it sees the answer.
    assert await dispatcher.admission("pool").step() == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert len(dispatcher.leases) == 0
    state = dispatcher.registry.get("w")
    assert state is not None and state.leases == 0
    await dispatcher.close()


async def test_slots_open_in_priority_order() -> None:
    dispatcher = make_dispatcher(queue_limit=10)
    add_worker(dispatcher)
    held = await dispatcher.place(req())
    order: list[int] = []

    async def place(priority: int) -> None:
        placed = await dispatcher.place(req(priority))
        order.append(priority)
        await asyncio.sleep(0.01)
        dispatcher.release(placed.lease.lease_id)

    tasks = []
    for priority in (BATCH, STANDARD, INTERACTIVE, BATCH, STANDARD, INTERACTIVE):
        tasks.append(asyncio.create_task(place(priority)))
        await settle()
    dispatcher.release(held.lease.lease_id)
    await asyncio.wait_for(asyncio.gather(*tasks), 2.0)
    assert order == [INTERACTIVE, INTERACTIVE, STANDARD, STANDARD, BATCH, BATCH]
    await dispatcher.close()


async def test_a_waiter_no_worker_can_take_does_not_hold_up_those_behind_it() -> None:
    dispatcher = make_dispatcher(queue_limit=10)
    add_worker(dispatcher, "w1", capacity=1)
    dispatcher.report(identity("w2", models=("m@2",)), LoadSnapshot(capacity=1), draining=False)
    held = await dispatcher.place(req())
    stuck = [asyncio.create_task(dispatcher.place(req())) for _ in range(2)]
    await settle()
    # Queued behind two m@1 waiters that w1 (full) cannot take yet.
    other = await asyncio.wait_for(dispatcher.place(req(model="m@2")), 1.0)
    assert other.lease.worker_id == "w2"
    assert not any(task.done() for task in stuck) and queued(dispatcher) == 2
    dispatcher.release(held.lease.lease_id)
    first = await asyncio.wait_for(asyncio.shield(stuck[0]), 1.0)
    assert first.lease.worker_id == "w1" and queued(dispatcher) == 1
    await dispatcher.close()
    await asyncio.gather(*stuck, return_exceptions=True)


async def test_batch_alone_fills_the_pool_yet_online_work_is_placed_at_once() -> None:
    dispatcher = make_dispatcher(queue_limit=10, batch_share_while_online=0.5, batch_queue_ahead=2)
    add_worker(dispatcher, capacity=4)
    # Alone, batch takes every slot and two more in the engine's queue.
    batch = [await asyncio.wait_for(dispatcher.place(req(BATCH)), 0.5) for _ in range(6)]
    waiting_batch = asyncio.create_task(dispatcher.place(req(BATCH)))
    await settle()
    assert not waiting_batch.done()
    # The engine runs online work first: it is placed without waiting.
    online = await asyncio.wait_for(dispatcher.place(req(INTERACTIVE)), 0.5)
    assert online.lease.worker_id == "w"
    # While online work is around, batch gets nothing until it holds
    # less than its share (2 of 4 slots).
    for lease in batch[:4]:
        dispatcher.release(lease.lease.lease_id)
        await settle()
        assert not waiting_batch.done()
    dispatcher.release(batch[4].lease.lease_id)
    await asyncio.wait_for(waiting_batch, 1.0)
    await dispatcher.close()


async def test_once_online_work_has_gone_batch_may_fill_the_pool_again() -> None:
    dispatcher = make_dispatcher(queue_limit=10, batch_share_while_online=0.5, online_linger_s=0.0)
    add_worker(dispatcher, capacity=4)
    online = await dispatcher.place(req(INTERACTIVE))
    assert [await asyncio.wait_for(dispatcher.place(req(BATCH)), 0.5) for _ in range(2)]
    third = asyncio.create_task(dispatcher.place(req(BATCH)))
    await settle()
    assert not third.done()
    dispatcher.release(online.lease.lease_id)
    await asyncio.wait_for(third, 0.5)
    await asyncio.wait_for(dispatcher.place(req(BATCH)), 0.5)
    await dispatcher.close()


async def test_a_pinned_request_waits_for_its_own_worker() -> None:
    dispatcher = make_dispatcher(queue_limit=10, batch_queue_ahead=0)
    add_worker(dispatcher, "w1", capacity=1)
    add_worker(dispatcher, "w2", capacity=1)
    first = await dispatcher.place(PlacementRequest("p1", "m@1", "t", BATCH, worker_id="w1"))
    assert first.lease.worker_id == "w1"
    second = asyncio.create_task(dispatcher.place(PlacementRequest("p2", "m@1", "t", BATCH, worker_id="w1")))
    await settle()
    # w2 is free, but the request asked for w1.
    assert not second.done()
    dispatcher.release(first.lease.lease_id)
    assert (await asyncio.wait_for(second, 0.5)).lease.worker_id == "w1"
    with pytest.raises(NoWorkerAvailable, match="w9"):
        await dispatcher.place(PlacementRequest("p3", "m@1", "t", BATCH, worker_id="w9"))
    await dispatcher.close()


async def test_a_well_served_lease_keeps_a_late_reporting_worker_alive() -> None:
    dispatcher = Dispatcher(
        registry=WorkerRoster(stale_after_s=0.2),
        leases=LeaseTable(ttl_s=30.0),
        pools=PoolDirectory(model_pools={"m@1": "pool"}),
    )
    add_worker(dispatcher, capacity=2)
    lease = await dispatcher.place(req())
    await asyncio.sleep(0.15)
    dispatcher.release(lease.lease.lease_id, served=True)
    await asyncio.sleep(0.15)
    # 0.3 s since its report, but it finished a request 0.15 s ago.
    dispatcher.sweep()
    assert dispatcher.registry.get("w") is not None
    await asyncio.sleep(0.25)
    dispatcher.sweep()
    assert dispatcher.registry.get("w") is None
    await dispatcher.close()


async def test_batch_waits_while_any_online_request_waits() -> None:
    dispatcher = make_dispatcher(queue_limit=10)
    add_worker(dispatcher, capacity=1)
    held = await dispatcher.place(req(STANDARD))
    batch = asyncio.create_task(dispatcher.place(req(BATCH)))
    await settle()
    standard = asyncio.create_task(dispatcher.place(req(STANDARD)))
    await settle()
    dispatcher.release(held.lease.lease_id)
    placed = await asyncio.wait_for(standard, 1.0)
    await settle()
    assert not batch.done()
    dispatcher.release(placed.lease.lease_id)
    await asyncio.wait_for(batch, 1.0)
    await dispatcher.close()


async def test_tenants_share_a_busy_pool_by_weight() -> None:
    dispatcher = make_dispatcher(queue_limit=200, weights={"gold": 3.0, "basic": 1.0})
    add_worker(dispatcher, capacity=1)
    held = await dispatcher.place(req())
    served: list[str] = []

    async def place(tenant: str) -> None:
        placed = await dispatcher.place(req(tenant=tenant))
        served.append(tenant)
        await asyncio.sleep(0)
        dispatcher.release(placed.lease.lease_id)

    tasks = [asyncio.create_task(place(t)) for t in ["basic"] * 60 + ["gold"] * 60]
    await settle()
    dispatcher.release(held.lease.lease_id)
    await asyncio.wait_for(asyncio.gather(*tasks), 5.0)
    first_80 = Counter(served[:80])
    # 3:1 while both are backlogged (60 gold run out after ~80 services).
    assert 57 <= first_80["gold"] <= 63 and first_80["basic"] >= 17
    await dispatcher.close()


async def test_online_work_pushes_batch_out_of_a_full_queue(dispatcher: Dispatcher) -> None:
    add_worker(dispatcher)
    held = await dispatcher.place(req())
    batch = [asyncio.create_task(dispatcher.place(req(BATCH))) for _ in range(4)]
    await settle()
    interactive = asyncio.create_task(dispatcher.place(req(INTERACTIVE)))
    await settle()
    pushed_out = [t for t in batch if t.done()]
    assert len(pushed_out) == 1
    with pytest.raises(QueueFull, match="took this request's place"):
        await pushed_out[0]
    dispatcher.release(held.lease.lease_id)
    assert isinstance(await asyncio.wait_for(interactive, 1.0), Placement)
    for task in batch:
        task.cancel()
    await asyncio.gather(*batch, return_exceptions=True)
    await dispatcher.close()


async def test_waiters_fail_when_their_workers_are_gone_for_good() -> None:
    dispatcher = make_dispatcher(queue_limit=4, orphan_grace_s=0.05)
    add_worker(dispatcher)
    await dispatcher.place(req())
    waiting = asyncio.create_task(dispatcher.place(req()))
    await settle()
    dispatcher.worker_gone("w")
    dispatcher.sweep()
    await settle()
    assert not waiting.done()  # a restart gets the grace period
    await asyncio.sleep(0.06)
    dispatcher.sweep()
    with pytest.raises(NoWorkerAvailable, match="any more"):
        await asyncio.wait_for(waiting, 1.0)
    assert queued(dispatcher) == 0
    await dispatcher.close()


async def test_an_expired_lease_hands_its_slot_to_a_waiter() -> None:
    dispatcher = make_dispatcher(ttl_s=0.05, queue_limit=4)
    add_worker(dispatcher)
    await dispatcher.place(req())  # never released: its holder crashed
    waiting = asyncio.create_task(dispatcher.place(req()))
    await asyncio.sleep(0.08)
    dispatcher.sweep()
    placed = await asyncio.wait_for(waiting, 1.0)
    assert placed.lease.worker_id == "w" and len(dispatcher.leases) == 1
    await dispatcher.close()


async def test_a_worker_with_a_filling_kv_cache_takes_less() -> None:
    dispatcher = make_dispatcher(queue_limit=0, kv_cache_soft_limit=0.5, kv_cache_hard_limit=0.9)
    add_worker(dispatcher, name="cool", capacity=8)
    add_worker(dispatcher, name="hot", capacity=8, kv_cache_usage=0.8)
    placed: Counter[str] = Counter()
    with pytest.raises(QueueFull):
        while True:
            placed[(await dispatcher.place(req())).lease.worker_id] += 1
    assert placed == {"cool": 8, "hot": 2}
    await dispatcher.close()


async def test_closing_fails_the_waiters() -> None:
    dispatcher = make_dispatcher(queue_limit=4)
    add_worker(dispatcher)
    await dispatcher.place(req())
    waiting = asyncio.create_task(dispatcher.place(req()))
    await settle()
    await dispatcher.close()
    with pytest.raises(Exception, match="stopping"):
        await waiting


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_queue_depth_waits_placements_and_rejections_are_counted() -> None:
    dispatcher = make_dispatcher(queue_limit=1)
    add_worker(dispatcher)
    labels = {"pool": "pool", "priority": "standard"}
    placed_before = sample("headrace_scheduler_placements_total", pool="pool", policy="least_load")
    waits_before = sample("headrace_scheduler_queue_wait_seconds_count", **labels)
    full_before = sample("headrace_scheduler_rejections_total", reason="queue_full", **labels)
    held = await dispatcher.place(req())
    waiting = asyncio.create_task(dispatcher.place(req()))
    await settle()
    assert sample("headrace_scheduler_queue_depth", **labels) == 1
    with pytest.raises(QueueFull):
        await dispatcher.place(req())
    assert sample("headrace_scheduler_rejections_total", reason="queue_full", **labels) == full_before + 1
    dispatcher.release(held.lease.lease_id)
    await asyncio.wait_for(waiting, 1.0)
    assert sample("headrace_scheduler_queue_depth", **labels) == 0
    assert sample("headrace_scheduler_placements_total", pool="pool", policy="least_load") == placed_before + 2
    assert sample("headrace_scheduler_queue_wait_seconds_count", **labels) == waits_before + 2
    await dispatcher.close()


async def test_only_online_leases_tell_how_fast_online_waiters_get_slots() -> None:
    dispatcher = make_dispatcher(queue_limit=10)
    add_worker(dispatcher, capacity=2)
    bound = dispatcher.admission("pool").wait_bound
    batch = await dispatcher.place(req(BATCH))
    dispatcher.release(batch.lease.lease_id)
    # A batch row's hold says nothing of online waits.
    assert bound.hold_s is None
    online = await dispatcher.place(req(INTERACTIVE))
    dispatcher.release(online.lease.lease_id)
    assert bound.hold_s is not None
    await dispatcher.close()


async def test_a_placement_made_ahead_counts_its_wait_for_the_autoscaler_once_used() -> None:
    dispatcher = make_dispatcher(queue_limit=4)
    add_worker(dispatcher, capacity=2)
    waits: list[float] = []
    dispatcher.autoscaling.observe_queue_wait = lambda pool, now, wait_s: waits.append(wait_s)  # type: ignore[method-assign]
    # Given back unused (the cache answered): no wait, it needed no worker.
    unused = await dispatcher.place(replace(req(INTERACTIVE), only_if_free=True))
    dispatcher.release(unused.lease.lease_id, used=False)
    assert waits == []
    # Used (the cache missed): its wait counts, once.
    used = await dispatcher.place(replace(req(INTERACTIVE), only_if_free=True))
    assert waits == []
    dispatcher.release(used.lease.lease_id, served=True)
    assert len(waits) == 1
    # An ordinary placement counts at once, as before.
    await dispatcher.place(req(INTERACTIVE))
    assert len(waits) == 2
    await dispatcher.close()
