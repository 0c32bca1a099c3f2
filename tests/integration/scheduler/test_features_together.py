"""Features that each have tests of their own, together, where a first
release broke: one model version served by two pools of different price,
two scheduler replicas, a batch job through the queue and online requests
at the same time; and one replica killed with SIGKILL midway.

Real processes as `headrace up` runs them (bench/harness.py: Redis, two
scheduler replicas, a synthetic worker and its batch consumer per pool,
cache, router), real gRPC. Assertions are on counts and the order of
events (rows finished around each online request, who served what), not
on wall time."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import pytest

from bench.harness import MeshUnderTest, running_mesh
from headrace.local.redis_server import free_port_run
from headrace.v1 import batch_pb2, generation_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc
from tests.support.batch import chat_rows, results

pytestmark = pytest.mark.slow

MODEL = "gen"
# The version's own pool is the dear one: batch must go to the cheaper pool
# by its price (docs/autoscaling.md, "GPU and CPU pools by cost"), not by
# the order the config names the pools in.
DEAR, CHEAP = "dear", "cheap"
SLOTS = 8
TOKENS_PER_S = 40.0
# One row alone: 16 tokens at 40/s, 0.4 s; the job runs in waves of SLOTS.
ROW_TOKENS = 16
ROWS = 60
ONLINE_TOKENS = 2
ONLINE_CALLERS = 2
REPLICAS = 2


def mesh_config() -> dict[str, Any]:
    # One run of free ports for every server of the mesh (bench/failover.py
    # takes one for the replicas and workers): ports picked apart could
    # overlap, and free_port_run's are outside the ephemeral range.
    base = free_port_run(REPLICAS + 2 + 5)
    router, cache = base + REPLICAS + 2, base + REPLICAS + 5
    engine = {"kind": "synthetic", "ttft_ms": 5, "tokens_per_s": TOKENS_PER_S, "max_concurrency": SLOTS}
    # The same engine at a tenth of the price: 0.36 vs 3.6 USD/h at 40 tok/s.
    pool = {"workers": 1, "engine": engine, "throughput_tokens_per_s": TOKENS_PER_S}
    return {
        "pools": {DEAR: {**pool, "price_per_hour": 3.6}, CHEAP: {**pool, "price_per_hour": 0.36}},
        "models": {MODEL: {"default_version": "1", "versions": {"1": {"pool": DEAR, "also_pools": [CHEAP]}}}},
        "default_model": MODEL,
        "default_embedding_model": "",
        "router": {"port": router, "http_port": router + 1, "metrics_port": router + 2},
        "cache": {"port": cache, "metrics_port": cache + 1, "semantic": {"enabled": False}},
        "scheduler": {
            "replicas": REPLICAS,
            "port": base,
            "metrics_port": None,
            "report_interval_ms": 100,
            "replica_ttl_s": 1.0,
            "worker_stale_after_s": 3.0,
        },
        "worker": {"base_port": base + REPLICAS, "metrics_port_offset": None},
        "batch": {"chunk_rows": 4, "retry_backoff_s": 0.05, "retry_backoff_max_s": 0.2, "restore_interval_s": 1},
    }


@pytest.fixture
def mesh() -> Iterator[MeshUnderTest]:
    with running_mesh(mesh_config(), timeout_s=120) as running:
        yield running


@dataclass
class OnlineCall:
    # Rows of the job finished when it was sent and when it was answered
    # (0 and 0 before the job was submitted).
    rows_before: int
    rows_after: int
    worker_id: str = ""
    error: str = ""


@dataclass
class CombinedRun:
    job: batch_pb2.BatchJob
    online: list[OnlineCall] = field(default_factory=list)
    # custom_id -> times it is in the output file, and the error file's lines.
    output_ids: Counter[str] = field(default_factory=Counter)
    error_lines: list[dict[str, Any]] = field(default_factory=list)
    # Pool of the worker that served each row.
    rows_by_pool: Counter[str] = field(default_factory=Counter)
    # The most batch rows the cheap worker's engine held at once (running or
    # waiting, not online), sampled while online work was around.
    most_batch_on_cheap: int = 0


def online_request(n: int) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        model=MODEL,
        prompt=f"an online question {n}",
        sampling=generation_pb2.SamplingParams(temperature=0.0, max_tokens=ONLINE_TOKENS),
        priority=generation_pb2.PRIORITY_INTERACTIVE,
        cache=generation_pb2.CachePolicy(no_cache=True, no_store=True),
    )


def pool_of(worker_id: str) -> str:
    return worker_id.rsplit("-", 1)[0]


async def combined_run(mesh: MeshUnderTest, *, kill_replica_after_rows: int | None = None) -> CombinedRun:
    """Online requests (ONLINE_CALLERS closed loops) from before the job is
    submitted until its last row is done; SIGKILL scheduler replica 0 once
    `kill_replica_after_rows` rows have finished."""
    cheap_worker = next(p.address for p in mesh.processes if p.name == f"worker-{CHEAP}-0")
    async with (
        grpc.aio.insecure_channel(mesh.router_address) as channel,
        grpc.aio.insecure_channel(cheap_worker) as worker_channel,
    ):
        stub = router_pb2_grpc.RouterStub(channel)
        worker = worker_pb2_grpc.WorkerStub(worker_channel)
        run = CombinedRun(job=batch_pb2.BatchJob())
        done = asyncio.Event()
        sent = 0

        async def finished_rows() -> int:
            if not run.job.id:
                return 0
            job = await read(stub.GetBatch, batch_pb2.GetBatchRequest(batch_id=run.job.id))
            return int(job.request_counts.completed + job.request_counts.failed)

        async def caller() -> None:
            nonlocal sent
            while not done.is_set():
                sent += 1
                call = OnlineCall(rows_before=await finished_rows(), rows_after=0)
                try:
                    answer = await stub.Generate(online_request(sent), timeout=30.0)
                    call.worker_id = answer.route.worker_id
                    if answer.usage.completion_tokens != ONLINE_TOKENS:
                        call.error = f"{answer.usage.completion_tokens} tokens"
                except grpc.aio.AioRpcError as exc:
                    call.error = f"{exc.code().name}: {exc.details()}"
                call.rows_after = await finished_rows()
                run.online.append(call)

        async def watch() -> None:
            killed = kill_replica_after_rows is None
            while True:
                rows = await finished_rows()
                if not killed and rows >= (kill_replica_after_rows or 0):
                    victim = next(p for p in mesh.processes if p.name == "scheduler-0")
                    # No goodbye: its heartbeat key expires, its leases die with it.
                    os.killpg(victim.pid, signal.SIGKILL)
                    killed = True
                load = await worker.GetLoad(worker_pb2.GetLoadRequest(), timeout=10.0)
                run.most_batch_on_cheap = max(run.most_batch_on_cheap, load.running + load.waiting - load.online)
                if rows >= ROWS:
                    done.set()
                    return
                await asyncio.sleep(0.02)

        callers = [asyncio.create_task(caller()) for _ in range(ONLINE_CALLERS)]
        # Online work is around (answered, so both replicas have seen it)
        # before the job comes: from its first row, batch gets only its share.
        await asyncio.wait_for(_until(lambda: len(run.online) >= 2 * ONLINE_CALLERS), timeout=20.0)
        run.job = await stub.SubmitBatch(
            batch_pb2.SubmitBatchRequest(
                input_jsonl=chat_rows(ROWS, model=MODEL, max_tokens=ROW_TOKENS), endpoint="/v1/chat/completions"
            )
        )
        await asyncio.wait_for(watch(), timeout=40.0)
        await asyncio.gather(*callers)

        run.job = await read(stub.GetBatch, batch_pb2.GetBatchRequest(batch_id=run.job.id))
        output = await read(stub.GetFileContent, batch_pb2.GetFileContentRequest(file_id=run.job.output_file_id))
        run.output_ids = Counter(json.loads(line)["custom_id"] for line in output.content.splitlines() if line.strip())
        if run.job.error_file_id:  # OpenAI's way: no error file when no row failed
            errors = await read(stub.GetFileContent, batch_pb2.GetFileContentRequest(file_id=run.job.error_file_id))
            run.error_lines = [json.loads(line) for line in errors.content.splitlines() if line.strip()]
        run.rows_by_pool = Counter(pool_of(r.response.route.worker_id) for r in await results(stub, run.job.id))
    return run


async def read(method: Any, request: Any) -> Any:
    """A read made to watch the run, asked again on UNAVAILABLE: the router
    forwards batch calls to any scheduler replica, and one in flight on the
    replica killed fails so (headrace/runtime/scheduler_replicas.py)."""
    for attempt in range(10):
        try:
            return await method(request, timeout=10.0)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 9:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("unreachable")


async def _until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.02)


def assert_nothing_lost(run: CombinedRun) -> None:
    failed = [call for call in run.online if call.error]
    assert run.online and not failed, failed
    assert run.job.status == batch_pb2.BATCH_STATUS_COMPLETED, run.job
    assert run.job.request_counts.completed == ROWS and run.job.request_counts.failed == 0, run.job.request_counts
    # Each row in the output file exactly once, none in the error file.
    assert run.output_ids == Counter({f"row-{i}": 1 for i in range(ROWS)}), run.output_ids
    assert run.error_lines == []


async def test_batch_and_online_together_on_two_pools_and_two_replicas(mesh: MeshUnderTest) -> None:
    run = await combined_run(mesh)
    assert_nothing_lost(run)
    # Batch has its completion window: every row on the cheaper pool,
    # whatever its wait (pool_choice.py, "batch-cheapest").
    assert run.rows_by_pool == Counter({CHEAP: ROWS}), run.rows_by_pool
    # Online first: an online request sent while the job ran waited for at
    # most the rows running when it came (one wave of SLOTS, two if it
    # straddled a wave's end), never for the rows queued behind them.
    during = [call for call in run.online if call.rows_after < ROWS]
    assert during, run.online
    assert max(call.rows_after - call.rows_before for call in during) <= 2 * SLOTS, run.online
    # While online work is around, batch holds at most its share of the
    # worker (batch_share_while_online, 0.5), both replicas together.
    assert run.most_batch_on_cheap <= SLOTS // 2, run.most_batch_on_cheap


async def test_a_replica_killed_midway_loses_no_online_request_and_no_row(mesh: MeshUnderTest) -> None:
    run = await combined_run(mesh, kill_replica_after_rows=ROWS // 4)
    assert_nothing_lost(run)
    # The survivor went on with both: online answers after the kill, and the
    # job's remaining rows, each once (above).
    assert any(call.rows_before >= ROWS // 4 for call in run.online), run.online
    assert run.rows_by_pool == Counter({CHEAP: ROWS}), run.rows_by_pool
    # The survivor takes the whole batch share when the dead replica's key
    # expires, while the dead one's rows still run: at most its part more
    # (docs/scheduler.md, "Consistency").
    assert run.most_batch_on_cheap <= SLOTS // 2 + math.ceil(SLOTS // 2 / REPLICAS), run.most_batch_on_cheap
