"""Batch jobs over gRPC through the whole mesh: the router forwards to the
scheduler, chunks go through a real Celery queue on Redis to a consumer
(a real Celery worker) that runs the rows on a real worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from headrace.local.redis_server import RedisServer
from headrace.runtime.config import hash_api_key
from headrace.v1 import batch_pb2, generation_pb2, scheduler_pb2, worker_pb2
from tests.integration.batch.conftest import batch_settings
from tests.support.batch import chat_rows, jsonl, parse_jsonl, results, running_consumer, wait_for_job
from tests.support.mesh import InProcessMesh, start_mesh

POOLS: dict[str, Any] = {
    "smollm2": {"engine": {"kind": "synthetic", "ttft_ms": 5, "tokens_per_s": 2000}},
    "embed": {"engine": {"kind": "synthetic"}},
    # Every request fails before its first token.
    "flaky": {"engine": {"kind": "synthetic", "fail_rate": 1.0}},
}
MODELS: dict[str, Any] = {
    "smollm2": {"default_version": "1", "versions": {"1": {"pool": "smollm2"}}},
    "minilm": {"task": "embed", "default_version": "1", "versions": {"1": {"pool": "embed"}}},
    "flaky": {"default_version": "1", "versions": {"1": {"pool": "flaky"}}},
}


@pytest.fixture
async def mesh(redis_server: RedisServer) -> AsyncIterator[InProcessMesh]:
    running = await start_mesh(batch_settings(redis_server.url, pools=POOLS, models=MODELS))
    yield running
    await running.close()


async def worker_address(mesh: InProcessMesh, pool: str) -> str:
    listing = await mesh.scheduler_stub().ListWorkers(scheduler_pb2.ListWorkersRequest(pool=pool))
    return str(listing.workers[0].info.endpoint)


async def test_a_job_runs_every_row_once_and_answers_in_openai_format(mesh: InProcessMesh) -> None:
    stub = mesh.router_stub()
    async with running_consumer(mesh.settings, pool="smollm2", worker_address=await worker_address(mesh, "smollm2")):
        job = await stub.SubmitBatch(
            batch_pb2.SubmitBatchRequest(
                input_jsonl=chat_rows(10), endpoint="/v1/chat/completions", metadata={"team": "rivers"}
            )
        )
        assert job.id.startswith("batch_") and job.request_counts.total == 10
        assert job.status == batch_pb2.BATCH_STATUS_IN_PROGRESS and job.input_file_id
        done = await wait_for_job(stub, job.id)
    assert done.status == batch_pb2.BATCH_STATUS_COMPLETED, done
    assert (done.request_counts.completed, done.request_counts.failed) == (10, 0)
    assert done.output_file_id and not done.error_file_id
    assert done.completed_at >= done.in_progress_at >= done.created_at > 0
    assert dict(done.metadata) == {"team": "rivers"}
    content = await stub.GetFileContent(batch_pb2.GetFileContentRequest(file_id=done.output_file_id))
    assert content.info.purpose == "batch_output" and content.info.bytes == len(content.content)
    lines = parse_jsonl(content.content)
    # In input order, each row once.
    assert [line["custom_id"] for line in lines] == [f"row-{i}" for i in range(10)]
    first = lines[0]
    assert first["id"].startswith("batch_req_") and first["error"] is None
    assert first["response"]["status_code"] == 200
    body = first["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == "smollm2@1"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert len(body["choices"][0]["message"]["content"].split()) == 4
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4
    streamed = await results(stub, job.id)
    assert sorted(r.custom_id for r in streamed) == sorted(f"row-{i}" for i in range(10))
    assert all(r.response.usage.completion_tokens == 4 and r.finished_at > 0 for r in streamed)
    # The input is kept as a file of its own.
    original = await stub.GetFileContent(batch_pb2.GetFileContentRequest(file_id=done.input_file_id))
    assert original.content == chat_rows(10)


async def test_following_results_streams_rows_as_they_finish_until_the_end(mesh: InProcessMesh) -> None:
    stub = mesh.router_stub()
    job = await stub.SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(12)))
    # Follow before any consumer runs: the stream waits, then ends with the job.
    follower = asyncio.create_task(results(stub, job.id, follow=True))
    await asyncio.sleep(0.3)
    assert not follower.done()
    async with running_consumer(mesh.settings, pool="smollm2", worker_address=await worker_address(mesh, "smollm2")):
        streamed = await asyncio.wait_for(follower, timeout=30)
    assert sorted(r.line for r in streamed) == list(range(1, 13))
    job = await stub.GetBatch(batch_pb2.GetBatchRequest(batch_id=job.id))
    assert job.status == batch_pb2.BATCH_STATUS_COMPLETED


async def test_a_row_that_keeps_failing_lands_in_the_error_file_and_the_job_completes(mesh: InProcessMesh) -> None:
    stub = mesh.router_stub()
    async with running_consumer(mesh.settings, pool="flaky", worker_address=await worker_address(mesh, "flaky")):
        job = await stub.SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(3, model="flaky")))
        done = await wait_for_job(stub, job.id)
    assert done.status == batch_pb2.BATCH_STATUS_COMPLETED
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 3)
    assert done.error_file_id and not done.output_file_id
    errors = parse_jsonl(
        (await stub.GetFileContent(batch_pb2.GetFileContentRequest(file_id=done.error_file_id))).content
    )
    assert [e["custom_id"] for e in errors] == ["row-0", "row-1", "row-2"]
    for line in errors:
        assert line["response"] is None and line["error"]["code"] == "row_failed"
        # Tried row_max_attempts (2) times, with the engine's reason.
        assert line["error"]["message"].startswith("failed after 2 attempts; last: unavailable: synthetic engine")
    assert mesh.batch is not None
    attempts = await mesh.batch.store.redis.hgetall(mesh.batch.store.job_key(job.id, "attempts"))
    assert sorted(int(v) for v in attempts.values()) == [2, 2, 2]


async def test_a_file_with_bad_lines_fails_validation_naming_each_line(mesh: InProcessMesh) -> None:
    bad = (
        chat_rows(2)
        + b"not json\n"
        + jsonl(
            [
                {
                    "custom_id": "row-0",
                    "url": "/v1/chat/completions",
                    "body": {"messages": [{"role": "user", "content": "x"}]},
                },
                {"custom_id": "t", "url": "/v1/chat/completions", "body": {"messages": [], "max_tokens": 4}},
                {"custom_id": "u", "url": "/v1/chat/completions", "body": {"model": "nope", "messages": []}},
                {"custom_id": "v", "url": "/v1/embeddings", "body": {"input": "x"}},
                {"custom_id": "w", "url": "/v1/chat/completions", "body": {"tools": [], "messages": []}},
            ]
        )
    )
    job = await mesh.router_stub().SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=bad))
    assert job.status == batch_pb2.BATCH_STATUS_FAILED and job.failed_at > 0
    assert job.request_counts.total == 0
    found = {(e.line, e.code, e.param) for e in job.errors}
    assert found == {
        (3, "invalid_json_line", ""),
        (4, "duplicate_custom_id", "custom_id"),
        (5, "missing_required_parameter", "body.messages"),
        (6, "invalid_value", "body.model"),
        (7, "mismatched_endpoint", "url"),
        (8, "unsupported_parameter", "body.tools"),
    }
    assert any("nope" in e.message for e in job.errors)


async def test_submit_refuses_bad_requests_naming_the_field(mesh: InProcessMesh) -> None:
    stub = mesh.router_stub()
    cases = [
        (batch_pb2.SubmitBatchRequest(), "input_jsonl / input_file_id"),
        (batch_pb2.SubmitBatchRequest(input_jsonl=b"x", endpoint="/v1/images"), "endpoint"),
        (batch_pb2.SubmitBatchRequest(input_jsonl=b"x", completion_window="1h"), "completion_window"),
        (batch_pb2.SubmitBatchRequest(input_jsonl=b"x", metadata={f"k{i}": "v" for i in range(17)}), "metadata"),
        (batch_pb2.SubmitBatchRequest(input_file_id="file-nope"), "file-nope"),
    ]
    for request, named in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SubmitBatch(request)
        assert caught.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), request
        assert named in (caught.value.details() or ""), caught.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetBatch(batch_pb2.GetBatchRequest(batch_id="batch_nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_the_queue_is_bounded_at_submit_time(redis_server: RedisServer) -> None:
    settings = batch_settings(redis_server.url, pools=POOLS, models=MODELS, batch={"max_pending_rows_per_pool": 10})
    mesh = await start_mesh(settings)
    try:
        stub = mesh.router_stub()
        # No consumer runs: accepted rows wait in the queue.
        first = await stub.SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(8)))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(3)))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "8 rows waiting, limit 10" in (caught.value.details() or "")
        assert dict(caught.value.trailing_metadata() or ())["retry-after"] == "30"
        # Another pool has its own bound.
        await stub.SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(3, model="flaky")))
        # Cancelling gives the unrun rows' places back.
        cancelled = await stub.CancelBatch(batch_pb2.CancelBatchRequest(batch_id=first.id))
        assert cancelled.status == batch_pb2.BATCH_STATUS_CANCELLED
        await stub.SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(10)))
    finally:
        await mesh.close()


async def test_files_upload_submit_by_id_and_delete(mesh: InProcessMesh) -> None:
    stub = mesh.router_stub()
    info = await stub.UploadFile(
        batch_pb2.UploadFileRequest(filename="questions.jsonl", purpose="batch", content=chat_rows(2))
    )
    assert info.id.startswith("file-") and info.bytes == len(chat_rows(2)) and info.purpose == "batch"
    assert (await stub.GetFile(batch_pb2.GetFileRequest(file_id=info.id))).filename == "questions.jsonl"
    job = await stub.SubmitBatch(batch_pb2.SubmitBatchRequest(input_file_id=info.id))
    assert job.input_file_id == info.id and job.request_counts.total == 2
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UploadFile(batch_pb2.UploadFileRequest(filename="x.jsonl", purpose="fine-tune", content=b"{}"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "purpose" in (caught.value.details() or "")
    deleted = await stub.DeleteFile(batch_pb2.DeleteFileRequest(file_id=info.id))
    assert deleted.deleted
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetFile(batch_pb2.GetFileRequest(file_id=info.id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_embedding_jobs_answer_in_the_embeddings_format(mesh: InProcessMesh) -> None:
    stub = mesh.router_stub()
    rows = jsonl(
        {"custom_id": f"e{i}", "url": "/v1/embeddings", "body": {"model": "minilm", "input": [f"text {i}", "more"]}}
        for i in range(3)
    )
    async with running_consumer(mesh.settings, pool="embed", worker_address=await worker_address(mesh, "embed")):
        job = await stub.SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=rows, endpoint="/v1/embeddings"))
        done = await wait_for_job(stub, job.id)
    assert done.status == batch_pb2.BATCH_STATUS_COMPLETED and done.request_counts.completed == 3
    lines = parse_jsonl(
        (await stub.GetFileContent(batch_pb2.GetFileContentRequest(file_id=done.output_file_id))).content
    )
    body = lines[0]["response"]["body"]
    assert body["object"] == "list" and body["model"] == "minilm@1"
    assert [d["index"] for d in body["data"]] == [0, 1] and len(body["data"][0]["embedding"]) == 384


async def test_tenants_see_only_their_own_jobs_and_files(redis_server: RedisServer) -> None:
    tenants = {
        "acme": {"api_key_sha256": [hash_api_key("key-acme")]},
        "globex": {"api_key_sha256": [hash_api_key("key-globex")]},
    }
    mesh = await start_mesh(batch_settings(redis_server.url, pools=POOLS, models=MODELS, tenants=tenants))
    acme = (("authorization", "Bearer key-acme"),)
    globex = (("authorization", "Bearer key-globex"),)
    try:
        stub = mesh.router_stub()
        job = await stub.SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(2)), metadata=acme)
        upload = await stub.UploadFile(
            batch_pb2.UploadFileRequest(filename="a.jsonl", purpose="batch", content=chat_rows(1)), metadata=acme
        )
        for call, request in (
            (stub.GetBatch, batch_pb2.GetBatchRequest(batch_id=job.id)),
            (stub.CancelBatch, batch_pb2.CancelBatchRequest(batch_id=job.id)),
            (stub.GetFile, batch_pb2.GetFileRequest(file_id=upload.id)),
            (stub.GetFileContent, batch_pb2.GetFileContentRequest(file_id=job.input_file_id)),
            (stub.DeleteFile, batch_pb2.DeleteFileRequest(file_id=upload.id)),
            (stub.SubmitBatch, batch_pb2.SubmitBatchRequest(input_file_id=upload.id)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(request, metadata=globex)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND, call
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            call = stub.StreamBatchResults(batch_pb2.StreamBatchResultsRequest(batch_id=job.id), metadata=globex)
            _ = [r async for r in call]
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert list((await stub.ListBatches(batch_pb2.ListBatchesRequest(), metadata=globex)).batches) == []
        mine = await stub.ListBatches(batch_pb2.ListBatchesRequest(), metadata=acme)
        assert [b.id for b in mine.batches] == [job.id]
        # The owner still can.
        assert (await stub.GetBatch(batch_pb2.GetBatchRequest(batch_id=job.id), metadata=acme)).id == job.id
    finally:
        await mesh.close()


async def test_list_pages_newest_first(mesh: InProcessMesh) -> None:
    stub = mesh.router_stub()
    ids = [(await stub.SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(1)))).id for _ in range(5)]
    page = await stub.ListBatches(batch_pb2.ListBatchesRequest(limit=2))
    assert [b.id for b in page.batches] == ids[::-1][:2] and page.has_more
    rest = await stub.ListBatches(batch_pb2.ListBatchesRequest(limit=10, after=page.batches[-1].id))
    assert [b.id for b in rest.batches] == ids[::-1][2:] and not rest.has_more
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListBatches(batch_pb2.ListBatchesRequest(limit=101))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit" in (caught.value.details() or "")


async def test_a_worker_asked_for_the_whole_answer_sends_it_in_one_message(mesh: InProcessMesh) -> None:
    request = worker_pb2.WorkerGenerateRequest(
        request_id="whole-1",
        model_version="smollm2@1",
        request=generation_pb2.GenerateRequest(
            prompt="say it all", sampling=generation_pb2.SamplingParams(max_tokens=6, temperature=0)
        ),
        priority=generation_pb2.PRIORITY_BATCH,
    )
    streamed = [m async for m in mesh.worker_stub().Generate(request)]
    request.whole_answer = True
    (whole,) = [m async for m in mesh.worker_stub().Generate(request)]
    assert len(streamed) == 6
    assert whole.text == "".join(m.text for m in streamed)
    assert list(whole.token_ids) == [t for m in streamed for t in m.token_ids]
    assert whole.finish_reason == generation_pb2.FINISH_REASON_LENGTH and whole.usage.completion_tokens == 6


async def test_a_row_whose_consumers_keep_dying_ends_in_the_error_file(mesh: InProcessMesh) -> None:
    """Attempts live in Redis: a row that killed its consumer on every try
    (here: both allowed attempts already used) is not run again."""
    stub = mesh.router_stub()
    assert mesh.batch is not None
    store = mesh.batch.store
    job = await stub.SubmitBatch(batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(3)))
    record = await store.load_job(job.id)
    assert record is not None
    for consumer in ("gone-1", "gone-2"):
        await store.begin_attempt(record, 0, consumer)
    async with running_consumer(mesh.settings, pool="smollm2", worker_address=await worker_address(mesh, "smollm2")):
        done = await wait_for_job(stub, job.id)
    assert done.status == batch_pb2.BATCH_STATUS_COMPLETED
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    errors = parse_jsonl(
        (await stub.GetFileContent(batch_pb2.GetFileContentRequest(file_id=done.error_file_id))).content
    )
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [("row-0", "row_failed")]
    assert "its consumer stopped while running it" in errors[0]["error"]["message"]


async def test_the_worker_counts_online_requests_apart_from_batch_rows(mesh: InProcessMesh) -> None:
    worker = mesh.worker_stub(0)
    for priority, online in ((generation_pb2.PRIORITY_STANDARD, 1), (generation_pb2.PRIORITY_BATCH, 0)):
        call = worker.Generate(
            worker_pb2.WorkerGenerateRequest(
                request_id=f"count-{priority}",
                model_version="smollm2@1",
                request=generation_pb2.GenerateRequest(
                    prompt="long", sampling=generation_pb2.SamplingParams(max_tokens=512)
                ),
                priority=priority,
            )
        )
        await call.read()
        load = await worker.GetLoad(worker_pb2.GetLoadRequest())
        assert (load.running, load.online) == (1, online), priority
        call.cancel()
