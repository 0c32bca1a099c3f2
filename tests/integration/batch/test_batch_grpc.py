"""Batch jobs over gRPC through the whole mesh: the router forwards to the
scheduler, chunks go through a real Celery queue on Redis to a consumer
(a real Celery worker) that runs the rows on a real worker."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from headrace.local_redis import RedisServer
from headrace.v1 import batch_pb2
from tests.integration.batch.conftest import batch_settings
from tests.support.batch import chat_rows, parse_jsonl, results, running_consumer, wait_for_job
from tests.support.mesh import InProcessMesh, start_mesh

pytestmark = pytest.mark.integration


@pytest.fixture
async def mesh(redis_server: RedisServer) -> AsyncIterator[InProcessMesh]:
    running = await start_mesh(batch_settings(redis_server.url))
    yield running
    await running.close()


async def test_a_job_runs_every_row_once_and_answers_in_openai_format(mesh: InProcessMesh) -> None:
    stub = mesh.router_stub()
    async with running_consumer(mesh.settings, pool="smollm2", worker_address=mesh.workers[0].address):
        job = await stub.SubmitBatch(
            batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(10), endpoint="/v1/chat/completions")
        )
        assert job.id.startswith("batch_") and job.request_counts.total == 10
        done = await wait_for_job(stub, job.id)
    assert done.status == batch_pb2.BATCH_STATUS_COMPLETED, done
    assert (done.request_counts.completed, done.request_counts.failed) == (10, 0)
    assert done.output_file_id and not done.error_file_id
    content = await stub.GetFileContent(batch_pb2.GetFileContentRequest(file_id=done.output_file_id))
    lines = parse_jsonl(content.content)
    assert sorted(line["custom_id"] for line in lines) == sorted(f"row-{i}" for i in range(10))
    first = lines[0]
    assert first["error"] is None and first["response"]["status_code"] == 200
    body = first["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == "smollm2@1"
    assert body["usage"]["completion_tokens"] == 4
    streamed = await results(stub, job.id)
    assert sorted(r.custom_id for r in streamed) == sorted(f"row-{i}" for i in range(10))
