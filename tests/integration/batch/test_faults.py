"""Faults in the middle of a job, with real parts: consumers are real Celery
worker processes (killed with SIGKILL), Redis runs with its append-only
file on and is restarted, and the rows run on a real worker (synthetic
engine, paced so a job takes a few seconds)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from headrace.local.redis_server import RedisServer
from headrace.runtime.config import BatchSettings, Settings
from headrace.v1 import batch_pb2
from tests.integration.batch.conftest import batch_settings
from tests.support.batch import (
    ConsumerProcess,
    chat_rows,
    parse_jsonl,
    results,
    running_consumer,
    wait_for_job,
    wait_until,
    write_config,
)
from tests.support.mesh import InProcessMesh, start_mesh

# 8 tokens at 10 tokens/s: each row takes about 0.8 s.
SLOW_POOLS: dict[str, Any] = {
    "smollm2": {"engine": {"kind": "synthetic", "ttft_ms": 20, "tokens_per_s": 10}},
    "embed": {"engine": {"kind": "synthetic"}},
}
ROW_TOKENS = 8


def fault_settings(redis_url: str, **batch: Any) -> Settings:
    return batch_settings(
        redis_url,
        pools=SLOW_POOLS,
        batch={
            # Chunks take about a second; a killed consumer's chunks come
            # back after 4 s, looked for every second.
            "visibility_timeout_s": 4,
            "chunk_timeout_s": 3.5,
            "restore_interval_s": 1,
            **batch,
        },
    )


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own (append-only on): restarting it disturbs
    no other test."""
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def consumers(tmp_path: Path) -> AsyncIterator[list[ConsumerProcess]]:
    started: list[ConsumerProcess] = []
    yield started
    for consumer in started:
        consumer.stop()


async def start_consumers(
    mesh: InProcessMesh, count: int, tmp_path: Path, started: list[ConsumerProcess]
) -> list[ConsumerProcess]:
    config = write_config(mesh.settings, tmp_path / "headrace.yaml")
    for index in range(count):
        started.append(
            ConsumerProcess(
                config,
                pool="smollm2",
                index=index,
                worker_address=mesh.workers[0].address,
                worker_id="smollm2-0",
                log_path=tmp_path / f"consumer-{index}.log",
            )
        )
    await asyncio.gather(*(consumer.wait_ready(mesh.settings) for consumer in started))
    return started


async def assert_every_row_once(mesh: InProcessMesh, job: batch_pb2.BatchJob, rows: int) -> None:
    stub = mesh.router_stub()
    assert job.status == batch_pb2.BATCH_STATUS_COMPLETED, job
    assert (job.request_counts.completed, job.request_counts.failed) == (rows, 0)
    content = await stub.GetFileContent(batch_pb2.GetFileContentRequest(file_id=job.output_file_id))
    ids = [line["custom_id"] for line in parse_jsonl(content.content)]
    assert sorted(ids) == sorted(f"row-{i}" for i in range(rows))
    # Announced once each, too: the results stream has no duplicates.
    streamed = [result.custom_id for result in await results(stub, job.id)]
    assert sorted(streamed) == sorted(ids)
    assert all(
        line["response"]["body"]["usage"]["completion_tokens"] == ROW_TOKENS for line in parse_jsonl(content.content)
    )


# The recovery settings as shipped: what a user gets after a kill -9.
DEFAULT_RECOVERY = {
    name: BatchSettings.model_fields[name].default
    for name in ("visibility_timeout_s", "restore_interval_s", "chunk_timeout_s")
}


@pytest.mark.slow
async def test_a_consumer_killed_mid_job_loses_no_row_and_doubles_none(
    tmp_path: Path, redis_server: RedisServer, consumers: list[ConsumerProcess]
) -> None:
    # Default visibility timeout, sweep and chunk timeout: the victim's
    # chunks come back because it stops renewing them, in seconds.
    mesh = await start_mesh(fault_settings(redis_server.url, max_inflight_rows=8, **DEFAULT_RECOVERY))
    try:
        victim, survivor = await start_consumers(mesh, 2, tmp_path, consumers)
        stub = mesh.router_stub()
        store = mesh.batch.store if mesh.batch else None
        assert store is not None
        job = await stub.SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(48, max_tokens=ROW_TOKENS)))

        async def victim_mid_row() -> bool:
            started = await store.started_by(job.id)
            mine = [row for row, who in started.items() if who.startswith(f"{victim.name}:")]
            return bool(mine) and bool(await store.unfinished(job.id, mine))

        await wait_until(victim_mid_row, what="the victim to be running rows")
        started = await store.started_by(job.id)
        interrupted = await store.unfinished(
            job.id, [row for row, who in started.items() if who.startswith(f"{victim.name}:")]
        )
        victim.kill()
        killed_at = time.monotonic()

        async def interrupted_done() -> bool:
            return not await store.unfinished(job.id, interrupted)

        # The bound is generous (the target is 18 s): a loaded machine is slow.
        await wait_until(interrupted_done, timeout_s=90, what="the victim's rows to be run again")
        # Reported, not asserted (bench/ holds timings): how long the rows stood.
        print(f"\nrecovery after kill -9: the victim's rows done {time.monotonic() - killed_at:.1f}s after")
        done = await wait_for_job(stub, job.id, timeout_s=60)
        await assert_every_row_once(mesh, done, 48)
        assert survivor.process.poll() is None
    finally:
        await mesh.close()


async def test_redis_restarted_mid_job_and_the_job_completes(
    tmp_path: Path, private_redis: RedisServer, consumers: list[ConsumerProcess]
) -> None:
    mesh = await start_mesh(fault_settings(private_redis.url, max_inflight_rows=8))
    try:
        await start_consumers(mesh, 1, tmp_path, consumers)
        stub = mesh.router_stub()
        job = await stub.SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(32, max_tokens=ROW_TOKENS)))

        async def some_done() -> bool:
            current: batch_pb2.BatchJob = await stub.GetBatch(batch_pb2.GetBatchRequest(batch_id=job.id))
            return 0 < current.request_counts.completed < 32

        await wait_until(some_done, what="the first results")
        await asyncio.to_thread(private_redis.restart)
        done = await wait_for_job(stub, job.id, timeout_s=60)
        await assert_every_row_once(mesh, done, 32)
    finally:
        await mesh.close()


async def test_cancel_mid_job_starts_no_new_row_and_keeps_finished_ones(redis_server: RedisServer) -> None:
    mesh = await start_mesh(fault_settings(redis_server.url, max_inflight_rows=4))
    try:
        stub = mesh.router_stub()
        store = mesh.batch.store if mesh.batch else None
        assert store is not None
        async with running_consumer(mesh.settings, pool="smollm2", worker_address=mesh.workers[0].address):
            job = await stub.SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(40, max_tokens=ROW_TOKENS)))

            async def some_done() -> bool:
                current: batch_pb2.BatchJob = await stub.GetBatch(batch_pb2.GetBatchRequest(batch_id=job.id))
                return current.request_counts.completed >= 4

            await wait_until(some_done, what="the first results")
            cancelling = await stub.CancelBatch(batch_pb2.CancelBatchRequest(batch_id=job.id))
            started_at_cancel = await store.started_count(job.id)
            assert cancelling.status in (batch_pb2.BATCH_STATUS_CANCELLING, batch_pb2.BATCH_STATUS_CANCELLED)
            done = await wait_for_job(stub, job.id, timeout_s=30)
            # Give the consumer every chance to start a row it should not.
            await asyncio.sleep(0.5)
            assert await store.started_count(job.id) == started_at_cancel
        assert done.status == batch_pb2.BATCH_STATUS_CANCELLED
        assert done.cancelling_at and done.cancelled_at
        # Rows running at the cancel finished; every started row has its result.
        finished = done.request_counts.completed + done.request_counts.failed
        assert finished == started_at_cancel < 40
        content = await stub.GetFileContent(batch_pb2.GetFileContentRequest(file_id=done.output_file_id))
        assert len(parse_jsonl(content.content)) == done.request_counts.completed
        assert len(await results(stub, job.id)) == finished
    finally:
        await mesh.close()


@pytest.mark.slow
async def test_a_chunk_running_past_the_visibility_timeout_is_not_handed_out_twice(
    tmp_path: Path, redis_server: RedisServer, consumers: list[ConsumerProcess]
) -> None:
    # Rows of 4 s against a 2 s visibility timeout swept every second: only
    # the running consumer's renewals keep its chunks from the idle one.
    slow = {**SLOW_POOLS, "smollm2": {"engine": {"kind": "synthetic", "ttft_ms": 20, "tokens_per_s": 2}}}
    settings = batch_settings(
        redis_server.url,
        pools=slow,
        batch={"visibility_timeout_s": 2, "restore_interval_s": 1, "chunk_timeout_s": 60, "max_inflight_rows": 8},
    )
    mesh = await start_mesh(settings)
    try:
        await start_consumers(mesh, 2, tmp_path, consumers)
        stub = mesh.router_stub()
        store = mesh.batch.store if mesh.batch else None
        assert store is not None
        job = await stub.SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(8, max_tokens=ROW_TOKENS)))
        done = await wait_for_job(stub, job.id, timeout_s=60)
        await assert_every_row_once(mesh, done, 8)
        attempts = await store.redis.hgetall(store.job_key(job.id, "attempts"))
        assert len(attempts) == 8
        assert {int(v) for v in attempts.values()} == {1}, attempts
    finally:
        await mesh.close()
