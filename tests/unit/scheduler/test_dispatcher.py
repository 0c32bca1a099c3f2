import asyncio

import pytest
from prometheus_client import REGISTRY

from headrace.runtime.config import PoolSchedulingSettings
from headrace.runtime.errors import NoWorkerAvailable
from services.scheduler.dispatcher import Dispatcher, PoolDirectory
from services.scheduler.leases import LeaseTable
from services.scheduler.placement import PlacementRequest
from services.scheduler.worker_roster import LoadSnapshot, WorkerIdentity, WorkerRoster
from tests.unit.scheduler.workers import identity


def make_dispatcher(stale_after_s: float = 3.0, ttl_s: float = 30.0, policy: str = "least_load") -> Dispatcher:
    return Dispatcher(
        registry=WorkerRoster(stale_after_s=stale_after_s),
        leases=LeaseTable(ttl_s=ttl_s),
        pools=PoolDirectory(model_pools={"m@1": "pool"}, pool_settings={"pool": PoolSchedulingSettings(policy=policy)}),
    )


def place_request(request_id: str = "r", model: str = "m@1", exclude: frozenset[str] = frozenset()) -> PlacementRequest:
    return PlacementRequest(request_id=request_id, model_version=model, tenant="t", priority=1, exclude=exclude)


async def test_places_on_the_least_loaded_worker_and_counts_leases() -> None:
    dispatcher = make_dispatcher()
    dispatcher.report(identity("a"), LoadSnapshot(running=3, capacity=8), draining=False)
    dispatcher.report(identity("b"), LoadSnapshot(running=1, capacity=8), draining=False)
    first = await dispatcher.place(place_request("1"))
    assert first.lease.worker_id == "b" and first.policy == "least_load"
    # b: 1 reported + 1 leased = 2, a: 3. Then b, and on ties the one with
    # fewer leased tokens.
    workers = [(await dispatcher.place(place_request(str(i)))).lease.worker_id for i in range(2, 6)]
    assert workers == ["b", "a", "b", "a"]
    assert len(dispatcher.leases) == 5
    released = dispatcher.release(first.lease.lease_id)
    assert released is not None
    assert dispatcher.release(first.lease.lease_id) is None  # idempotent
    await dispatcher.close()


async def test_no_worker_for_the_model_is_unavailable_with_a_reason() -> None:
    dispatcher = make_dispatcher()
    with pytest.raises(NoWorkerAvailable, match="none has reported in"):
        await dispatcher.place(place_request())
    dispatcher.report(identity("a"), LoadSnapshot(), draining=True)
    with pytest.raises(NoWorkerAvailable, match="not accepting"):
        await dispatcher.place(place_request())
    dispatcher.report(identity("a"), LoadSnapshot(), draining=False)
    with pytest.raises(NoWorkerAvailable, match="already tried a"):
        await dispatcher.place(place_request(exclude=frozenset({"a"})))
    await dispatcher.close()


async def test_unhealthy_and_other_model_workers_get_no_work() -> None:
    dispatcher = make_dispatcher()
    dispatcher.report(identity("sick"), LoadSnapshot(healthy=False), draining=False)
    dispatcher.report(identity("other", models=("x@1",)), LoadSnapshot(), draining=False)
    dispatcher.report(identity("ok"), LoadSnapshot(running=5, capacity=8), draining=False)
    assert (await dispatcher.place(place_request())).lease.worker_id == "ok"
    await dispatcher.close()


async def test_a_stale_worker_gets_no_new_work_even_before_it_is_dropped() -> None:
    dispatcher = make_dispatcher(stale_after_s=0.05)
    dispatcher.report(identity("quiet"), LoadSnapshot(capacity=8), draining=False)
    dispatcher.report(identity("chatty"), LoadSnapshot(running=6, capacity=8), draining=False)
    await asyncio.sleep(0.08)
    dispatcher.report(identity("chatty"), LoadSnapshot(running=6, capacity=8), draining=False)
    # quiet is idle but silent: still known, never chosen.
    assert dispatcher.registry.get("quiet") is not None
    for i in range(2):
        assert (await dispatcher.place(place_request(str(i)))).lease.worker_id == "chatty"
    await dispatcher.close()


async def test_silent_workers_are_dropped_with_their_leases() -> None:
    dispatcher = make_dispatcher(stale_after_s=0.05)
    dispatcher.report(identity("a"), LoadSnapshot(), draining=False)
    placed = await dispatcher.place(place_request())
    await asyncio.sleep(0.08)
    dispatcher.sweep()
    assert dispatcher.registry.get("a") is None
    assert dispatcher.leases.get(placed.lease.lease_id) is None
    await dispatcher.close()


async def test_unreleased_leases_expire_and_free_capacity() -> None:
    dispatcher = make_dispatcher(ttl_s=0.05)
    dispatcher.report(identity("a"), LoadSnapshot(), draining=False)
    placed = await dispatcher.place(place_request())
    state = dispatcher.registry.get("a")
    assert state is not None and state.leases == 1
    renewed = dispatcher.renew(placed.lease.lease_id)
    assert renewed is not None
    expired_before = REGISTRY.get_sample_value("headrace_scheduler_lease_expiries_total", {"pool": "pool"}) or 0.0
    await asyncio.sleep(0.08)
    dispatcher.sweep()
    assert state.leases == 0 and state.leased_tokens == 0
    assert REGISTRY.get_sample_value("headrace_scheduler_lease_expiries_total", {"pool": "pool"}) == expired_before + 1
    assert dispatcher.renew(placed.lease.lease_id) is None
    await dispatcher.close()


async def test_a_reconnecting_worker_keeps_its_leases() -> None:
    dispatcher = make_dispatcher()
    dispatcher.report(identity("a"), LoadSnapshot(), draining=False)
    await dispatcher.place(place_request())
    moved = WorkerIdentity("a", "127.0.0.1:1", "pool", frozenset({"m@1"}), "synthetic")
    state = dispatcher.report(moved, LoadSnapshot(), draining=False)
    assert state.identity.endpoint == "127.0.0.1:1"
    assert state.leases == 1
    await dispatcher.close()


async def test_a_model_missing_from_the_config_uses_the_pool_its_workers_report() -> None:
    dispatcher = make_dispatcher()
    dispatcher.report(identity("new", models=("fresh@2",), pool="rollout"), LoadSnapshot(), draining=False)
    placed = await dispatcher.place(place_request(model="fresh@2"))
    assert placed.lease.pool == "rollout"
    assert "rollout" in dispatcher.pool_names()
    await dispatcher.close()


def two_pool_dispatcher() -> Dispatcher:
    """Version m@1's own pool is "dear"; "cheap" serves it too, at a tenth
    of the price per token."""
    return Dispatcher(
        registry=WorkerRoster(stale_after_s=3.0),
        leases=LeaseTable(ttl_s=30.0),
        pools=PoolDirectory(
            model_pools={"m@1": "dear"},
            version_pools={"m@1": ("dear", "cheap")},
            pool_prices={"dear": 3.6, "cheap": 0.36},
            pool_throughput={"dear": 40.0, "cheap": 40.0},
            pool_settings={name: PoolSchedulingSettings(policy="least_load") for name in ("dear", "cheap")},
        ),
    )


async def test_a_batch_job_runs_on_the_cheapest_pool_with_workers_not_the_versions_own() -> None:
    dispatcher = two_pool_dispatcher()
    dispatcher.report(identity("dear-0", pool="dear"), LoadSnapshot(capacity=8), draining=False)
    # The cheaper pool has no worker yet: the job goes where rows can run.
    assert dispatcher.batch_pool("m@1") == "dear"
    dispatcher.report(identity("cheap-0", pool="cheap"), LoadSnapshot(running=8, capacity=8), draining=False)
    # Cheaper, and full: batch waits by design.
    assert dispatcher.batch_pool("m@1") == "cheap"
    # A version served by one pool: its own.
    assert dispatcher.batch_pool("other@1") is None
    await dispatcher.close()


async def test_a_row_pinned_to_a_worker_of_another_pool_of_its_version_is_admitted_by_that_pool() -> None:
    dispatcher = two_pool_dispatcher()
    dispatcher.report(identity("dear-0", pool="dear"), LoadSnapshot(capacity=8), draining=False)
    dispatcher.report(identity("cheap-0", pool="cheap"), LoadSnapshot(capacity=8), draining=False)
    row = PlacementRequest(request_id="row", model_version="m@1", tenant="t", priority=2, worker_id="cheap-0")
    # Before: the version's own pool ("dear") admitted it, whose workers
    # exclude cheap-0, so it waited for ever.
    placed = await asyncio.wait_for(dispatcher.place(row), timeout=2.0)
    assert (placed.lease.pool, placed.lease.worker_id) == ("cheap", "cheap-0")
    await dispatcher.close()
