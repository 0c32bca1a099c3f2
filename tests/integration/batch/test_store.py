"""The job store's promises, on a real Redis: a row's result is written
once; the last result completes the job; a cancel lets the started rows
finish and then ends the job; the queue bound and expiry give back what
unfinished rows held."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from headrace.batch.store import BatchStore, FileRecord, JobRecord, encode_row, open_redis
from headrace.local.redis_server import RedisServer
from headrace.runtime.errors import FailedPrecondition, NotFound
from headrace.v1 import batch_pb2, generation_pb2


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[tuple[BatchStore, Clock]]:
    clock = Clock()
    redis = open_redis(redis_server.url)
    yield BatchStore(redis, prefix=f"store-{uuid.uuid4().hex[:8]}:", retention_s=600, clock=clock), clock
    await redis.aclose()


async def new_job(store: BatchStore, rows: int, *, tenant: str = "acme", expires_in: int = 3600) -> JobRecord:
    now = store.now()
    job = JobRecord(
        id=f"batch_{uuid.uuid4().hex}",
        tenant=tenant,
        status="in_progress",
        endpoint="/v1/chat/completions",
        model_version="m@1",
        pool="p",
        input_file_id="file-in",
        output_file_id=f"file-{uuid.uuid4().hex[:8]}",
        error_file_id=f"file-{uuid.uuid4().hex[:8]}",
        total=rows,
        chunk_rows=2,
        completion_window="24h",
        created_at=now,
        expires_at=now + expires_in,
        in_progress_at=now,
    )
    assert await store.reserve("p", rows, limit=1000)
    files = [
        FileRecord(id=job.output_file_id, tenant=tenant, filename="o", purpose="batch_output", bytes=0, created_at=now)
    ]
    await store.create_job(job, [encode_row(i + 1, f"c{i}", b"") for i in range(rows)], files)
    return job


def ok(line: int) -> batch_pb2.BatchResult:
    return batch_pb2.BatchResult(
        custom_id=f"c{line - 1}", line=line, response=generation_pb2.GenerateResponse(text="x")
    )


async def test_a_result_is_written_once_and_the_last_one_completes_the_job(store: tuple[BatchStore, Clock]) -> None:
    s, _ = store
    job = await new_job(s, 2)
    assert (await s.begin_attempt(job, 0, "c1")).verdict == "run"
    assert await s.record(job, 0, ok(1)) == (True, "in_progress")
    # A second run of the same row (a redelivered chunk) writes nothing.
    assert await s.record(job, 0, ok(1)) == (False, "in_progress")
    assert (await s.begin_attempt(job, 0, "c2")).verdict == "done"
    assert await s.pending("p") == 1
    assert await s.record(job, 1, ok(2)) == (True, "completed")
    done = await s.get_job("acme", job.id)
    assert (done.status, done.completed, done.failed) == ("completed", 2, 0)
    assert done.completed_at == done.finalizing_at == s.now()
    assert await s.pending("p") == 0
    assert [r.custom_id for _, r in await s.result_events(job.id, after="0", count=10, block_ms=None)] == ["c0", "c1"]
    # Kept for the retention period, then gone.
    assert 0 < await s.redis.ttl(s.job_key(job.id)) <= 600
    assert 0 < await s.redis.ttl(s.job_key(job.id, "out")) <= 600


async def test_attempts_are_counted_across_consumers(store: tuple[BatchStore, Clock]) -> None:
    s, _ = store
    job = await new_job(s, 1)
    assert [(await s.begin_attempt(job, 0, f"c{i}")).attempt for i in range(3)] == [1, 2, 3]
    await s.undo_attempt(job, 0)
    assert (await s.begin_attempt(job, 0, "c9")).attempt == 3
    # The first consumer to start it stays on record.
    assert await s.started_by(job.id) == {0: "c0"}


async def test_cancel_lets_started_rows_finish_then_ends_the_job(store: tuple[BatchStore, Clock]) -> None:
    s, _ = store
    job = await new_job(s, 4)
    await s.begin_attempt(job, 0, "c")
    await s.begin_attempt(job, 1, "c")
    await s.record(job, 0, ok(1))
    cancelling = await s.cancel("acme", job.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    # A row not started yet never starts; the one running may still finish.
    assert (await s.begin_attempt(job, 2, "c")).verdict == "skip"
    assert (await s.begin_attempt(job, 1, "c")).verdict == "orphan"
    assert await s.record(job, 1, ok(2)) == (True, "cancelled")
    done = await s.get_job("acme", job.id)
    assert (done.status, done.completed) == ("cancelled", 2) and done.cancelled_at
    assert await s.pending("p") == 0
    # Cancelling again is harmless; a finished job cannot be cancelled.
    assert (await s.cancel("acme", job.id)).status == "cancelled"
    finished = await new_job(s, 1)
    await s.record(finished, 0, ok(1))
    with pytest.raises(FailedPrecondition, match="already ended"):
        await s.cancel("acme", finished.id)


async def test_a_cancel_with_nothing_running_ends_at_once(store: tuple[BatchStore, Clock]) -> None:
    s, _ = store
    job = await new_job(s, 3)
    assert (await s.cancel("acme", job.id)).status == "cancelled"
    assert await s.pending("p") == 0


async def test_the_pending_bound(store: tuple[BatchStore, Clock]) -> None:
    s, _ = store
    assert await s.reserve("q", 8, limit=10)
    assert not await s.reserve("q", 3, limit=10)
    await s.release("q", 8)
    assert await s.reserve("q", 10, limit=10)


async def test_jobs_past_their_window_expire_and_free_their_rows(store: tuple[BatchStore, Clock]) -> None:
    s, clock = store
    job = await new_job(s, 3, expires_in=60)
    await s.begin_attempt(job, 0, "c")
    await s.record(job, 0, ok(1))
    assert await s.expire_due() == []
    clock.now += 61
    assert await s.expire_due() == [job.id]
    expired = await s.get_job("acme", job.id)
    assert expired.status == "expired" and expired.expired_at == s.now()
    assert await s.pending("p") == 0
    assert (await s.begin_attempt(job, 1, "c")).verdict == "skip"


async def test_another_tenant_sees_nothing(store: tuple[BatchStore, Clock]) -> None:
    s, _ = store
    job = await new_job(s, 1)
    with pytest.raises(NotFound):
        await s.get_job("globex", job.id)
    with pytest.raises(NotFound):
        await s.cancel("globex", job.id)
    with pytest.raises(NotFound):
        await s.get_file("globex", job.output_file_id)
    assert (await s.list_jobs("globex", limit=10, after="")) == ([], False)
    assert (await s.get_job("acme", job.id)).id == job.id
