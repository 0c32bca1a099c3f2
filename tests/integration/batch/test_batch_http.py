"""/v1/files and /v1/batches with the official `openai` client, over real
HTTP to the router's gateway (the same app, middleware and error handlers
as chat), forwarding to the mesh's scheduler over gRPC."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from prometheus_client import REGISTRY

from headrace.local.redis_server import RedisServer
from headrace.runtime.config import hash_api_key
from tests.integration.batch.conftest import batch_settings
from tests.support.batch import chat_rows, parse_jsonl, running_consumer
from tests.support.mesh import InProcessMesh, start_mesh

MAX_FILE_BYTES = 256 * 1024
TENANTS = {
    "acme": {"api_key_sha256": [hash_api_key("key-acme")]},
    "globex": {"api_key_sha256": [hash_api_key("key-globex")]},
}


@dataclass
class Gateway:
    mesh: InProcessMesh
    base_url: str

    def client(self, key: str = "key-acme") -> AsyncOpenAI:
        return AsyncOpenAI(base_url=self.base_url, api_key=key, max_retries=0)


@pytest.fixture
async def gateway(redis_server: RedisServer) -> AsyncIterator[Gateway]:
    settings = batch_settings(
        redis_server.url, tenants=TENANTS, batch={"max_pending_rows_per_pool": 20, "max_file_bytes": MAX_FILE_BYTES}
    )
    mesh = await start_mesh(settings, http=True)
    yield Gateway(mesh=mesh, base_url=f"{mesh.http_url}/v1")
    await mesh.close()


async def retrieve_until_done(client: AsyncOpenAI, batch_id: str, timeout_s: float = 30.0) -> openai.types.Batch:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        assert time.monotonic() < deadline, batch
        await asyncio.sleep(0.05)


async def test_the_openai_client_uploads_runs_and_downloads_a_batch(gateway: Gateway) -> None:
    client = gateway.client()
    uploaded = await client.files.create(file=("questions.jsonl", chat_rows(6)), purpose="batch")
    assert uploaded.id.startswith("file-") and uploaded.purpose == "batch" and uploaded.bytes == len(chat_rows(6))
    assert (await client.files.retrieve(uploaded.id)).filename == "questions.jsonl"
    async with running_consumer(gateway.mesh.settings, pool="smollm2", worker_address=gateway.mesh.workers[0].address):
        batch = await client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"project": "mill"},
        )
        assert batch.status == "in_progress" and batch.input_file_id == uploaded.id
        done = await retrieve_until_done(client, batch.id)
    assert done.status == "completed" and done.metadata == {"project": "mill"}
    assert done.request_counts is not None and done.request_counts.completed == 6
    assert done.output_file_id and done.error_file_id is None and done.completed_at
    output = await client.files.content(done.output_file_id)
    lines = parse_jsonl(output.content)
    assert [line["custom_id"] for line in lines] == [f"row-{i}" for i in range(6)]
    assert all(line["response"]["body"]["object"] == "chat.completion" for line in lines)
    listed = await client.batches.list(limit=10)
    assert [b.id for b in listed.data] == [batch.id] and not listed.has_more
    deleted = await client.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id


async def test_cancel_and_errors_map_to_openai_exceptions(gateway: Gateway) -> None:
    client = gateway.client()
    uploaded = await client.files.create(file=("q.jsonl", chat_rows(15)), purpose="batch")
    # No consumer runs: the job waits in the queue, 15 of the pool's 20 places taken.
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    with pytest.raises(openai.RateLimitError) as limited:
        await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert limited.value.response.headers["retry-after"] == "30"
    assert "15 rows waiting, limit 20" in limited.value.message
    cancelled = await client.batches.cancel(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at
    with pytest.raises(openai.NotFoundError):
        await gateway.client("key-globex").batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        await gateway.client("key-globex").files.content(uploaded.id)
    with pytest.raises(openai.AuthenticationError):
        await gateway.client("wrong-key").batches.list()
    with pytest.raises(openai.BadRequestError) as bad:
        await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/images", completion_window="24h")  # type: ignore[arg-type]
    assert "endpoint" in bad.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        await client.files.create(file=("x.jsonl", b"{}"), purpose="fine-tune")
    assert "purpose" in bad.value.message
    with pytest.raises(openai.APIStatusError) as conflict:
        await client.batches.cancel(batch.id + "x")
    assert conflict.value.status_code == 404


async def test_a_file_with_bad_lines_makes_a_failed_batch_with_line_errors(gateway: Gateway) -> None:
    client = gateway.client()
    uploaded = await client.files.create(file=("bad.jsonl", chat_rows(1) + b"{oops\n"), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data
    (error,) = batch.errors.data
    assert (error.code, error.line) == ("invalid_json_line", 2)


def errors_counted(error_type: str) -> float:
    return REGISTRY.get_sample_value("headrace_http_errors_total", {"type": error_type}) or 0.0


async def test_batch_errors_come_through_the_gateways_one_door(gateway: Gateway) -> None:
    """Auth, error body (with a real code), request id and the ERRORS metric,
    as for chat."""
    before = errors_counted("NotFound")
    async with httpx.AsyncClient(base_url=gateway.mesh.http_url, headers={"authorization": "Bearer key-acme"}) as http:
        missing = await http.get("/v1/batches/batch_nope")
        stranger = await http.get("/v1/files", headers={"authorization": "Bearer wrong"})
        bad_json = await http.post("/v1/batches", content=b"{oops", headers={"content-type": "application/json"})
        unknown = await http.post(
            "/v1/batches", json={"input_file_id": "file-1", "endpoint": "/v1/chat/completions", "colour": "red"}
        )
        huge = await http.post("/v1/batches", content=b"x" * (gateway.mesh.settings.gateway.max_body_bytes + 1))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert missing.headers["x-request-id"] and errors_counted("NotFound") == before + 1
    assert stranger.status_code == 401 and stranger.json()["error"]["code"] == "unauthenticated"
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_argument"
    assert unknown.status_code == 400 and "colour" in unknown.json()["error"]["message"]
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "payload_too_large"


async def test_an_oversized_upload_is_refused_with_413_without_being_read_whole(gateway: Gateway) -> None:
    boundary = "headrace-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    sent = 0

    async def chunked_body() -> AsyncIterator[bytes]:
        # No Content-Length: the gateway can only count as it reads.
        nonlocal sent
        yield head
        for _ in range(4 * MAX_FILE_BYTES // 65536):
            sent += 65536
            yield b"x" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"authorization": "Bearer key-acme", "content-type": f"multipart/form-data; boundary={boundary}"}
    async with httpx.AsyncClient(base_url=gateway.mesh.http_url, headers=headers) as http:
        declared = await http.post("/v1/files", content=head + b"x" * (2 * MAX_FILE_BYTES))
        streamed = await http.post("/v1/files", content=chunked_body())
        small = await http.post("/v1/files", content=head + chat_rows(1) + f"\r\n--{boundary}--\r\n".encode())
    for refused in (declared, streamed):
        assert refused.status_code == 413, refused.text
        assert refused.json()["error"]["code"] == "payload_too_large"
    assert small.status_code == 200 and small.json()["bytes"] == len(chat_rows(1))
