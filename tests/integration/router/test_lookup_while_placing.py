"""The cache lookup and the first placement run at once (real gRPC, real
Redis, the exact cache, the synthetic engine): a hit gives its lease back
at once, and a hit is served even when the placement was refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import grpc.aio
import pytest
from prometheus_client import REGISTRY

from headrace.local.redis_server import RedisServer
from headrace.runtime.config import Settings
from headrace.v1 import generation_pb2, scheduler_pb2
from tests.support.mesh import InProcessMesh, start_mesh

POOL = "single"


def settings(redis_url: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        # One slot, no queue: a second request while one runs is refused.
        pools={
            POOL: {
                "engine": {"kind": "synthetic", "ttft_ms": 1, "tokens_per_s": 50, "max_concurrency": 1},
                "workers": 1,
            }
        },
        models={"solo": {"default_version": "1", "versions": {"1": {"pool": POOL}}}},
        default_model="solo",
        scheduler={"metrics_port": None, "pools": {POOL: {"queue_limit": 0}}},
        router={"metrics_port": None},
        cache={"metrics_port": None, "semantic": {"enabled": False}},
        worker={"metrics_port_offset": None},
    )


@pytest.fixture(scope="module")
async def mesh(redis_server: RedisServer) -> AsyncIterator[InProcessMesh]:
    running = await start_mesh(settings(redis_server.url))
    yield running
    await running.close()


def ask(text: str, *, max_tokens: int = 3, no_cache: bool = False) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        prompt=text,
        sampling=generation_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens),
        cache=generation_pb2.CachePolicy(no_cache=no_cache, no_store=no_cache),
    )


def sample(name: str, labels: dict[str, str]) -> float:
    """Summed over the labels not named."""
    return sum(
        s.value
        for metric in REGISTRY.collect()
        for s in metric.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def stored(mesh: InProcessMesh, text: str) -> None:
    """An answer the cache holds (it stores off the critical path)."""
    router = mesh.router_stub()
    assert (await router.Generate(ask(text))).route.cache == generation_pb2.CACHE_OUTCOME_MISS
    for _ in range(500):
        if (await router.Generate(ask(text))).route.cache == generation_pb2.CACHE_OUTCOME_HIT_EXACT:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"{text!r} was not stored")


async def eventually(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never came true")


async def leases_held(mesh: InProcessMesh) -> int:
    listing = await mesh.scheduler_stub().ListWorkers(scheduler_pb2.ListWorkersRequest(pool=POOL))
    return sum(worker.leases for worker in listing.workers)


async def no_leases_left(mesh: InProcessMesh) -> None:
    for _ in range(500):
        if await leases_held(mesh) == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{await leases_held(mesh)} leases still held")


async def test_a_hit_gives_back_the_lease_placed_beside_its_lookup(mesh: InProcessMesh) -> None:
    await stored(mesh, "what turns the wheel?")
    await no_leases_left(mesh)
    placements = sample("headrace_scheduler_placements_total", {"pool": POOL})
    given_back = sample("headrace_router_placements_ahead_total", {"outcome": "given_back"})
    answer = await mesh.router_stub().Generate(ask("what turns the wheel?"))
    assert answer.route.cache == generation_pb2.CACHE_OUTCOME_HIT_EXACT
    assert answer.route.worker_id == ""  # the worker was not asked
    # It was placed while the cache was asked (the placement may answer
    # after the hit did), and the scheduler got the slot back.
    await eventually(lambda: sample("headrace_router_placements_ahead_total", {"outcome": "given_back"}) > given_back)
    assert sample("headrace_scheduler_placements_total", {"pool": POOL}) == placements + 1
    await no_leases_left(mesh)
    # The slot serves the next request: one slot, no queue, so a leak would refuse it.
    fresh = await mesh.router_stub().Generate(ask("a new question", no_cache=True))
    assert fresh.route.worker_id and fresh.text


async def test_a_hit_is_served_when_the_placement_is_refused(mesh: InProcessMesh) -> None:
    await stored(mesh, "where does the water go?")
    await no_leases_left(mesh)
    router = mesh.router_stub()
    slow = router.GenerateStream(ask("a long answer", max_tokens=200, no_cache=True))
    await slow.read()  # first token: it holds the only slot now
    try:
        refused = sample("headrace_scheduler_rejections_total", {"pool": POOL, "reason": "queue_full"})
        busy = sample("headrace_router_placements_ahead_total", {"outcome": "busy"})
        answer = await router.Generate(ask("where does the water go?"))
        assert answer.route.cache == generation_pb2.CACHE_OUTCOME_HIT_EXACT and answer.text
        # Placed beside the lookup and refused (no slot free now), not queued,
        # and not counted as a rejection of a request.
        await eventually(lambda: sample("headrace_router_placements_ahead_total", {"outcome": "busy"}) > busy)
        assert sample("headrace_scheduler_rejections_total", {"pool": POOL, "reason": "queue_full"}) == refused
        # A miss still gets the refusal, from its second placement (queueing).
        with pytest.raises(grpc.aio.AioRpcError) as missed:
            await router.Generate(ask("something never asked"))
        assert missed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "its queue is full" in (missed.value.details() or "")
        assert sample("headrace_scheduler_rejections_total", {"pool": POOL, "reason": "queue_full"}) == refused + 1
    finally:
        slow.cancel()
    await no_leases_left(mesh)


async def test_a_lease_given_back_on_a_hit_does_not_count_as_a_hold(mesh: InProcessMesh) -> None:
    # The pool's queue bound and retry-after come from how long leases are
    # held (wait_bound.py). A hit's lease goes back within milliseconds of
    # its grant, unused: counted, a cache serving half the requests would
    # make the pool look twice as fast, and its queue twice as long.
    await stored(mesh, "how fast does the wheel turn?")
    await no_leases_left(mesh)
    bound = mesh.dispatcher.admission(POOL).wait_bound
    held_before = bound.hold_s
    assert held_before is not None  # the answer stored was generated, and its lease released
    given_back = sample("headrace_router_placements_ahead_total", {"outcome": "given_back"})
    answer = await mesh.router_stub().Generate(ask("how fast does the wheel turn?"))
    assert answer.route.cache == generation_pb2.CACHE_OUTCOME_HIT_EXACT
    await eventually(lambda: sample("headrace_router_placements_ahead_total", {"outcome": "given_back"}) > given_back)
    await no_leases_left(mesh)
    assert bound.hold_s == held_before


async def test_a_hit_does_not_count_as_a_request_that_got_a_worker_at_once(mesh: InProcessMesh) -> None:
    # The queue-wait SLO (99% of online requests get a worker within 1 s) and
    # the autoscaler's queue-wait p95 read the scheduler's queue waits. A hit
    # needed no worker: its placement made ahead, granted at once and given
    # back, must not add a zero wait to them; a miss that used it does.
    labels = {"pool": POOL}
    await stored(mesh, "who built the mill?")
    await no_leases_left(mesh)
    waits = sample("headrace_scheduler_queue_wait_seconds_count", labels)
    given_back = sample("headrace_router_placements_ahead_total", {"outcome": "given_back"})
    hit = await mesh.router_stub().Generate(ask("who built the mill?"))
    assert hit.route.cache == generation_pb2.CACHE_OUTCOME_HIT_EXACT
    await eventually(lambda: sample("headrace_router_placements_ahead_total", {"outcome": "given_back"}) > given_back)
    await no_leases_left(mesh)
    assert sample("headrace_scheduler_queue_wait_seconds_count", labels) == waits
    used = sample("headrace_router_placements_ahead_total", {"outcome": "used"})
    miss = await mesh.router_stub().Generate(ask("who owns the mill now?"))
    assert miss.route.cache == generation_pb2.CACHE_OUTCOME_MISS and miss.text
    assert sample("headrace_router_placements_ahead_total", {"outcome": "used"}) == used + 1
    await no_leases_left(mesh)
    assert sample("headrace_scheduler_queue_wait_seconds_count", labels) == waits + 1
