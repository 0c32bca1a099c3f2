"""One trace per request across every hop, as a collector receives it: the
mesh exports over OTLP/gRPC to a real receiver (tests/support/otlp_receiver.py),
and each test checks the tree's shape for one kind of request: HTTP (plain
and streamed), gRPC, a cache hit, a retried attempt. Every span carries the
request id the client sent (x-request-id). Batch: tests/integration/batch/
test_batch_tracing.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from headrace.batch.output_lines import row_request_id
from headrace.local.redis_server import RedisServer
from headrace.runtime.telemetry import REQUEST_ID_ATTRIBUTE
from headrace.v1 import batch_pb2
from tests.integration.batch.conftest import batch_settings
from tests.integration.test_mesh_grpc import greedy, mesh_settings
from tests.support.batch import chat_rows, running_consumer, wait_for_job
from tests.support.mesh import InProcessMesh, start_mesh
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan, SpanTree, otlp_receiver
from tests.support.routing import ask, routing_settings, synthetic

CALLER_SPAN_ID = "00f067aa0ba902b7"
PLACE, RELEASE, LOOKUP, WORKER, ENGINE = (
    "/headrace.v1.Scheduler/Place",
    "/headrace.v1.Scheduler/Release",
    "/headrace.v1.Cache/Lookup",
    "/headrace.v1.Worker/Generate",
    "headrace.engine.generate",
)
# A unary request's whole answer comes from the worker's Complete.
WORKER_WHOLE = "/headrace.v1.Worker/Complete"
CHAT_SPAN = "POST /v1/chat/completions"


def traceparent(trace_id: str) -> str:
    return f"00-{trace_id}-{CALLER_SPAN_ID}-01"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as running:
        yield running


@pytest.fixture
async def mesh(redis_server: RedisServer, receiver: OtlpReceiver) -> AsyncIterator[InProcessMesh]:
    running = await start_mesh(
        mesh_settings(redis_server.url), tracer_provider=receiver.provider("headrace-mesh"), http=True
    )
    await running.redis.flushdb()
    yield running
    await running.close()


def assert_one_request(tree: SpanTree, root: ReceivedSpan, request_id: str, *, worker_call: str = WORKER) -> None:
    """The served-request shape under `root`: cache lookup, placement and
    the worker's call (Generate for a stream, Complete for a whole answer)
    as children, the engine under the worker; the request id on every span."""
    assert root.parent_span_id == CALLER_SPAN_ID
    children = {s.name for s in tree.children(root)}
    assert {LOOKUP, PLACE, worker_call} <= children, tree.names()
    worker = tree.one(worker_call)
    engine = tree.one(ENGINE)
    assert engine.parent_span_id == worker.span_id
    assert engine.attributes["headrace.completion_tokens"] == 3
    assert engine.attributes["headrace.prompt_tokens"] > 0
    assert engine.attributes["headrace.engine_seconds"] > 0
    assert "headrace.queue_wait_seconds" in tree.one(PLACE).attributes
    assert {s.name: s.attributes.get(REQUEST_ID_ATTRIBUTE) for s in tree.spans} == {
        s.name: request_id for s in tree.spans
    }


async def test_http_chat_is_one_trace_from_the_gateway_to_the_engine(
    mesh: InProcessMesh, receiver: OtlpReceiver
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4701"
    async with httpx.AsyncClient(base_url=mesh.http_url) as client:
        answer = await client.post(
            "/v1/chat/completions",
            json={
                "model": "smollm2",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 3,
                "temperature": 0,
            },
            headers={"traceparent": traceparent(trace_id), "x-request-id": "http-plain-1"},
        )
    assert answer.status_code == 200, answer.text
    tree = SpanTree(await receiver.trace(trace_id, until={CHAT_SPAN, ENGINE, PLACE}))
    root = tree.one(CHAT_SPAN)
    assert root.kind == 2  # SERVER
    assert_one_request(tree, root, "http-plain-1", worker_call=WORKER_WHOLE)


async def test_http_stream_is_one_trace(mesh: InProcessMesh, receiver: OtlpReceiver) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4702"
    async with httpx.AsyncClient(base_url=mesh.http_url) as client:
        async with client.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "smollm2",
                "messages": [{"role": "user", "content": "stream"}],
                "max_tokens": 3,
                "temperature": 0,
                "stream": True,
            },
            headers={"traceparent": traceparent(trace_id), "x-request-id": "http-stream-1"},
        ) as answer:
            body = "".join([chunk async for chunk in answer.aiter_text()])
    assert "[DONE]" in body
    tree = SpanTree(await receiver.trace(trace_id, until={CHAT_SPAN, ENGINE, PLACE}))
    assert_one_request(tree, tree.one(CHAT_SPAN), "http-stream-1")


async def test_grpc_stream_is_one_trace(mesh: InProcessMesh, receiver: OtlpReceiver) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4703"
    chunks = [
        c
        async for c in mesh.router_stub().GenerateStream(
            greedy("trace me", max_tokens=3),
            metadata=(("traceparent", traceparent(trace_id)), ("x-request-id", "grpc-stream-1")),
        )
    ]
    assert len(chunks) == 3
    name = "/headrace.v1.Router/GenerateStream"
    tree = SpanTree(await receiver.trace(trace_id, until={name, ENGINE, PLACE}))
    assert_one_request(tree, tree.one(name), "grpc-stream-1")


async def test_a_cache_hit_is_a_lookup_beside_a_placement_given_back(
    mesh: InProcessMesh, receiver: OtlpReceiver
) -> None:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "cache me"}],
        "max_tokens": 3,
        "temperature": 0,
    }
    async with httpx.AsyncClient(base_url=mesh.http_url) as client:
        first = await client.post("/v1/chat/completions", json=body)
        assert first.headers["x-headrace-cache"] == "miss"
        for _ in range(200):  # stored off the critical path
            if await mesh.redis.keys("hr:cache:v1:entry:*"):
                break
            await asyncio.sleep(0.02)
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4704"
        hit = await client.post(
            "/v1/chat/completions",
            json=body,
            headers={"traceparent": traceparent(trace_id), "x-request-id": "http-hit-1"},
        )
    assert hit.headers["x-headrace-cache"] == "hit-exact"
    tree = SpanTree(await receiver.trace(trace_id, until={CHAT_SPAN, LOOKUP, PLACE, RELEASE}))
    root = tree.one(CHAT_SPAN)
    # The first placement runs beside the lookup; the hit gives its lease back.
    assert sorted(s.name for s in tree.children(root)) == sorted([LOOKUP, PLACE, RELEASE])
    assert tree.one(LOOKUP).attributes["headrace.cache.outcome"] == root.attributes["headrace.cache"] == "hit-exact"
    assert root.attributes[REQUEST_ID_ATTRIBUTE] == tree.one(LOOKUP).attributes[REQUEST_ID_ATTRIBUTE] == "http-hit-1"
    assert not tree.named(WORKER) and not tree.named(WORKER_WHOLE)


async def test_a_retried_attempt_shows_both_placements_under_one_request(
    redis_server: RedisServer, receiver: OtlpReceiver
) -> None:
    settings = routing_settings(
        redis_server.url,
        pools={"broken": {"engine": synthetic(fail_rate=1.0)}, "gen": {"engine": synthetic()}},
        models={
            "tm": {"default_version": "1", "versions": {"1": {"pool": "broken"}}},
            "tb": {"default_version": "1", "versions": {"1": {"pool": "gen"}}},
        },
        default_model="tm",
        routing={"fallbacks": {"tm": ["tb"]}},
    )
    mesh = await start_mesh(settings, tracer_provider=receiver.provider("headrace-mesh"))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4705"
    try:
        answer = await mesh.router_stub().Generate(
            ask("tm"), metadata=(("traceparent", traceparent(trace_id)), ("x-request-id", "retried-1"))
        )
        assert answer.model == "tb@1"
    finally:
        await mesh.close()
    name = "/headrace.v1.Router/Generate"
    tree = SpanTree(await receiver.trace(trace_id, until={name, ENGINE}))
    root = tree.one(name)
    places = [s for s in tree.children(root) if s.name == PLACE]
    workers = [s for s in tree.children(root) if s.name == WORKER_WHOLE]
    assert len(places) == 2 and len(workers) == 2, tree.names()
    assert sorted(w.status for w in workers) == [0, 2]  # the first failed, the fallback served
    failed = next(w for w in workers if w.status == 2)
    assert tree.children(failed)[0].status == 2  # its engine span says so too
    assert "headrace.retry.fallback" in root.events
    assert {s.attributes.get(REQUEST_ID_ATTRIBUTE) for s in tree.spans} == {"retried-1"}


async def test_a_batch_row_is_in_the_submit_trace(redis_server: RedisServer, receiver: OtlpReceiver) -> None:
    settings = batch_settings(redis_server.url, batch={"chunk_rows": 2})
    provider = receiver.provider("headrace-mesh")
    mesh = await start_mesh(settings, tracer_provider=provider)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4706"
    try:
        stub = mesh.router_stub()
        # mesh.settings: the scheduler's real port, where the consumer leases its rows.
        async with running_consumer(
            mesh.settings, pool="smollm2", worker_address=mesh.workers[0].address, tracer_provider=provider
        ):
            job = await stub.SubmitBatch(
                batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(2)),
                metadata=(("traceparent", traceparent(trace_id)), ("x-request-id", "batch-submit-1")),
            )
            await wait_for_job(stub, job.id)
    finally:
        await mesh.close()
    tree = SpanTree(await receiver.trace(trace_id, until={"batch.row", ENGINE}))
    root = tree.one("/headrace.v1.Router/SubmitBatch")
    assert root.parent_span_id == CALLER_SPAN_ID
    assert root.attributes[REQUEST_ID_ATTRIBUTE] == "batch-submit-1"
    (chunk,) = tree.named("batch.chunk")
    rows = tree.named("batch.row")
    assert len(rows) == 2 and all(r.parent_span_id == chunk.span_id for r in rows)
    for row in rows:
        # Rows reach the worker in shared GenerateBatch calls; each row's
        # part there joins the row's own trace.
        (worker,) = [s for s in tree.children(row) if s.name == "worker.batch_row"]
        (engine,) = tree.children(worker)
        assert engine.name == ENGINE and engine.attributes["headrace.priority"] == 2  # Priority.BATCH
        # Each row is a request of its own: its id (as in its output line) on its spans.
        row_id = row_request_id(job.id, row.attributes["batch.line"])
        assert {s.attributes[REQUEST_ID_ATTRIBUTE] for s in (row, worker, engine)} == {row_id}
