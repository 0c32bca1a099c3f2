"""The scheduler owns every slot, batch rows' included (docs/scheduler.md,
"One owner of capacity"): real Redis, real Celery consumers, real gRPC, on
the synthetic engine. Assertions follow the order of events (rows finished
before and after an online request, leases held, results written), not
wall time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from headrace.batch.store import BatchStore
from headrace.local.redis_server import RedisServer
from headrace.runtime.config import Settings, hash_api_key
from headrace.v1 import batch_pb2, generation_pb2, scheduler_pb2
from services.worker import metrics as worker_metrics
from tests.integration.batch.conftest import batch_settings
from tests.support.batch import chat_rows, results, running_consumer, wait_for_job, wait_until
from tests.support.mesh import InProcessMesh, start_mesh

pytestmark = pytest.mark.slow

POOL = "smollm2"
WORKER = f"{POOL}-0"


def capacity_settings(
    redis_url: str, *, slots: int, tokens_per_s: float, scheduling: dict[str, Any] | None = None, **extra: Any
) -> Settings:
    return batch_settings(
        redis_url,
        pools={
            POOL: {
                "engine": {"kind": "synthetic", "ttft_ms": 5, "tokens_per_s": tokens_per_s, "max_concurrency": slots}
            },
            "embed": {"engine": {"kind": "synthetic"}},
        },
        scheduler={"metrics_port": None, "pools": {POOL: {"policy": "least_load", **(scheduling or {})}}},
        **extra,
    )


def online(max_tokens: int = 2) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        model="smollm2",
        prompt="an online question",
        sampling=generation_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens),
        priority=generation_pb2.PRIORITY_INTERACTIVE,
        cache=generation_pb2.CachePolicy(no_cache=True, no_store=True),
    )


def now(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """A plain check as wait_until's async predicate."""

    async def predicate() -> bool:
        return check()

    return predicate


def worker_leases(mesh: InProcessMesh) -> tuple[int, int]:
    """(leases, batch leases) the scheduler holds on the worker now."""
    state = mesh.dispatcher.registry.get(WORKER)
    return (state.leases, state.batch_leases) if state is not None else (0, 0)


async def finished_rows(mesh: InProcessMesh, batch_id: str) -> int:
    job = await mesh.router_stub().GetBatch(batch_pb2.GetBatchRequest(batch_id=batch_id))
    return int(job.request_counts.completed + job.request_counts.failed)


async def test_an_online_request_gets_in_after_at_most_one_wave_of_a_saturating_batch(
    redis_server: RedisServer,
) -> None:
    # 4 slots; each row decodes 50 tokens at 100/s, so the job runs in waves.
    settings = capacity_settings(redis_server.url, slots=4, tokens_per_s=100, batch={"chunk_rows": 4})
    mesh = await start_mesh(settings)
    try:
        stub = mesh.router_stub()
        async with running_consumer(mesh.settings, pool=POOL, worker_address=mesh.workers[0].address):
            job = await stub.SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(16, max_tokens=50)))
            # The batch alone takes the whole pool.
            engine = mesh.workers[0].app.engine
            await wait_until(
                now(lambda: engine.stats().running == 4 and worker_leases(mesh)[1] >= 4),
                what="the batch running in all 4 slots",
            )
            before = await finished_rows(mesh, job.id)
            answer = await stub.Generate(online())
            after = await finished_rows(mesh, job.id)
            assert answer.usage.completion_tokens == 2
            # It waited for the first row to end, not for the job: at most
            # the 4 rows running when it came finished meanwhile.
            assert after - before <= 4, (before, after)
            assert after < 16
            done = await wait_for_job(stub, job.id)
        assert done.request_counts.completed == 16 and done.request_counts.failed == 0
    finally:
        await mesh.close()


async def test_no_row_runs_without_a_lease(redis_server: RedisServer) -> None:
    settings = capacity_settings(redis_server.url, slots=2, tokens_per_s=2000)
    mesh = await start_mesh(settings)
    try:
        scheduler, stub = mesh.scheduler_stub(), mesh.router_stub()
        # Online work holds both slots of the pool.
        held = [
            await scheduler.Place(
                scheduler_pb2.PlaceRequest(
                    request_id=f"hold-{i}",
                    model_version="smollm2@1",
                    tenant="t",
                    priority=generation_pb2.PRIORITY_INTERACTIVE,
                )
            )
            for i in range(2)
        ]
        async with running_consumer(mesh.settings, pool=POOL, worker_address=mesh.workers[0].address):
            job = await stub.SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(4)))
            admission = mesh.dispatcher.admission(POOL)
            await wait_until(now(lambda: admission.queue.depth(2) > 0), what="rows asking the scheduler for leases")
            # The rows wait in the scheduler's queue; none reached the worker.
            assert mesh.workers[0].app.engine.stats().running == 0
            assert await finished_rows(mesh, job.id) == 0
            for placed in held:
                await scheduler.Release(scheduler_pb2.ReleaseRequest(lease_id=placed.lease.lease_id))
            done = await wait_for_job(stub, job.id)
        assert done.request_counts.completed == 4
        assert worker_leases(mesh) == (0, 0)
    finally:
        await mesh.close()


async def test_batch_tenants_share_the_pool_by_weight(redis_server: RedisServer) -> None:
    settings = capacity_settings(
        redis_server.url,
        slots=1,
        tokens_per_s=500,
        batch={"chunk_rows": 4, "consumer_chunks": 6, "max_inflight_rows": 32},
        # One row at a time: the order they are leased in is the order they end.
        scheduling={"batch_queue_ahead": 0},
        tenants={
            "gold": {"api_key_sha256": [hash_api_key("gold-key")], "weight": 3.0},
            "basic": {"api_key_sha256": [hash_api_key("basic-key")], "weight": 1.0},
        },
    )
    mesh = await start_mesh(settings)
    try:
        stub = mesh.router_stub()
        gold, basic = (("authorization", "Bearer gold-key"),), (("authorization", "Bearer basic-key"),)
        # Both jobs' rows ask before any runs: the one slot is held meanwhile.
        hold = await mesh.scheduler_stub().Place(
            scheduler_pb2.PlaceRequest(
                request_id="hold", model_version="smollm2@1", tenant="t", priority=generation_pb2.PRIORITY_BATCH
            )
        )
        async with running_consumer(mesh.settings, pool=POOL, worker_address=mesh.workers[0].address):
            jobs = {
                "gold": await stub.SubmitBatch(
                    batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(12, max_tokens=8, prefix="g")), metadata=gold
                ),
                "basic": await stub.SubmitBatch(
                    batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(12, max_tokens=8, prefix="b")), metadata=basic
                ),
            }
            queue = mesh.dispatcher.admission(POOL).queue
            await wait_until(now(lambda: queue.depth(2) >= 24), what="both jobs' rows queued at the scheduler")
            await mesh.scheduler_stub().Release(scheduler_pb2.ReleaseRequest(lease_id=hold.lease.lease_id))
            await wait_for_job(stub, jobs["gold"].id, metadata=gold)
            await wait_for_job(stub, jobs["basic"].id, metadata=basic)
        # Rows in finishing order, from the jobs' result streams (one slot:
        # one row at a time, so the stream ids order them).
        client = aioredis.Redis.from_url(settings.redis_url)
        store = BatchStore(client, prefix=settings.batch.key_prefix, retention_s=60)
        finished: list[tuple[bytes, str]] = []
        for tenant, job in jobs.items():
            entries = await client.xrange(store.job_key(job.id, "events"))
            assert entries is not None
            for entry_id, _ in entries:
                assert isinstance(entry_id, bytes)
                finished.append((entry_id, tenant))
        await client.aclose()
        order = [tenant for _, tenant in sorted(finished, key=lambda e: tuple(map(int, e[0].split(b"-"))))]
        assert len(order) == 24
        # Gold (weight 3) gets three rows for each of basic's while both wait:
        # when gold's last row ends, basic has had about 4 (12 / 3).
        basic_by_then = order[: order.index("gold", len(order) - order[::-1].index("gold") - 1) + 1].count("basic")
        assert 2 <= basic_by_then <= 6, order
    finally:
        await mesh.close()


async def test_a_preempted_row_is_retried_exactly_once(redis_server: RedisServer) -> None:
    # One slot; the row decodes 100 tokens at 100/s. Online work may take
    # the slot of a preemptible batch row.
    settings = capacity_settings(
        redis_server.url, slots=1, tokens_per_s=100, scheduling={"online_preempts_batch": True}
    )
    mesh = await start_mesh(settings)
    try:
        stub = mesh.router_stub()
        engine = mesh.workers[0].app.engine
        preempted_before = worker_metrics.PREEMPTIONS._value.get()

        def preempted() -> float:
            return float(worker_metrics.PREEMPTIONS._value.get() - preempted_before)

        async with running_consumer(mesh.settings, pool=POOL, worker_address=mesh.workers[0].address):
            job = await stub.SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(1, max_tokens=100)))
            await wait_until(now(lambda: engine.stats().running == 1), what="the row running")
            # The online request does not wait for the row: it stops it.
            first = await stub.Generate(online())
            assert first.usage.completion_tokens == 2 and preempted() == 1
            # The row runs again, no longer preemptible: a second online
            # request waits for it instead of stopping it again.
            await wait_until(now(lambda: engine.stats().running == 1), what="the row running again")

            async def generate() -> generation_pb2.GenerateResponse:
                response: generation_pb2.GenerateResponse = await stub.Generate(online())
                return response

            second = asyncio.create_task(generate())
            done = await wait_for_job(stub, job.id)
            assert (await second).usage.completion_tokens == 2
        assert preempted() == 1
        assert done.request_counts.completed == 1 and done.request_counts.failed == 0
        (row,) = await results(stub, job.id)
        assert row.response.usage.completion_tokens == 100
        client = aioredis.Redis.from_url(settings.redis_url)
        store = BatchStore(client, prefix=settings.batch.key_prefix, retention_s=60)
        # The preempted attempt was not counted: one attempt, one result.
        assert await client.hget(store.job_key(job.id, "attempts"), "0") == b"1"
        await client.aclose()
    finally:
        await mesh.close()


async def test_online_work_brings_running_batch_rows_down_to_the_pools_share(redis_server: RedisServer) -> None:
    # 8 slots, a batch share of 1/4 while online work is around: an online
    # request that finds 8 preemptible rows running stops the newest 6, and
    # each of those runs again once, later, not preemptible.
    settings = capacity_settings(
        redis_server.url,
        slots=8,
        tokens_per_s=50,
        scheduling={"online_preempts_batch": True, "batch_share_while_online": 0.25, "batch_queue_ahead": 0},
    )
    mesh = await start_mesh(settings)
    try:
        stub = mesh.router_stub()
        engine = mesh.workers[0].app.engine
        preempted_before = worker_metrics.PREEMPTIONS._value.get()
        async with running_consumer(mesh.settings, pool=POOL, worker_address=mesh.workers[0].address):
            job = await stub.SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(8, max_tokens=100)))
            await wait_until(now(lambda: engine.stats().running == 8), what="every row running")
            answer = await stub.Generate(online())
            assert answer.usage.completion_tokens == 2
            assert worker_metrics.PREEMPTIONS._value.get() - preempted_before == 6
            # The two kept rows (and the online request, done) are what runs.
            assert engine.stats().running <= 2
            done = await wait_for_job(stub, job.id)
        assert done.request_counts.completed == 8 and done.request_counts.failed == 0
        rows = await results(stub, job.id)
        assert sorted(row.line for row in rows) == list(range(1, 9))
        assert all(row.response.usage.completion_tokens == 100 for row in rows)
        client = aioredis.Redis.from_url(settings.redis_url)
        store = BatchStore(client, prefix=settings.batch.key_prefix, retention_s=60)
        # Preempted attempts are not counted: one attempt per row.
        attempts = await client.hgetall(store.job_key(job.id, "attempts"))
        assert sorted(attempts.values()) == [b"1"] * 8
        await client.aclose()
    finally:
        await mesh.close()
