"""One trace follows a batch job across the queue: the caller's submit,
the scheduler's enqueue, each chunk task (trace context in the Celery
message's headers), each row, and the worker running it."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from headrace.local.redis_server import RedisServer
from headrace.v1 import batch_pb2
from tests.integration.batch.conftest import batch_settings
from tests.support.batch import chat_rows, running_consumer, wait_for_job
from tests.support.mesh import start_mesh

CALLER_TRACE_ID = "5bf92f3577b34da6a3ce929d0e0e4737"
CALLER_SPAN_ID = "10f067aa0ba902b8"


def trace_id(span: ReadableSpan) -> str:
    return format(span.context.trace_id, "032x")


async def test_one_trace_spans_submit_chunk_row_and_worker(redis_server: RedisServer) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = batch_settings(redis_server.url, batch={"chunk_rows": 2})
    mesh = await start_mesh(settings, tracer_provider=provider)
    try:
        stub = mesh.router_stub()
        async with running_consumer(
            mesh.settings, pool="smollm2", worker_address=mesh.workers[0].address, tracer_provider=provider
        ):
            job = await stub.SubmitBatch(
                batch_pb2.SubmitBatchRequest(input_jsonl=chat_rows(4)),
                metadata=(("traceparent", f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"),),
            )
            await wait_for_job(stub, job.id)
    finally:
        await mesh.close()
    spans = [s for s in exporter.get_finished_spans() if trace_id(s) == CALLER_TRACE_ID]
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    (router,) = by_name["/headrace.v1.Router/SubmitBatch"]
    (scheduler,) = by_name["/headrace.v1.Scheduler/SubmitBatch"]
    (enqueue,) = by_name["batch.enqueue"]
    chunks, rows, generations = by_name["batch.chunk"], by_name["batch.row"], by_name["worker.batch_row"]
    assert router.parent is not None and format(router.parent.span_id, "016x") == CALLER_SPAN_ID
    assert scheduler.parent is not None and scheduler.parent.span_id == router.context.span_id
    assert enqueue.parent is not None and enqueue.parent.span_id == scheduler.context.span_id
    # Two chunks of two rows, each row run once on the worker (rows ready
    # together share a GenerateBatch call; each row's span joins its trace).
    assert len(chunks) == 2 and len(rows) == 4 and len(generations) == 4
    assert {c.parent.span_id for c in chunks if c.parent} == {enqueue.context.span_id}
    chunk_ids = {c.context.span_id for c in chunks}
    assert all(r.parent is not None and r.parent.span_id in chunk_ids for r in rows)
    row_ids = {r.context.span_id for r in rows}
    assert all(g.parent is not None and g.parent.span_id in row_ids for g in generations)
    lines = [(r.attributes or {}).get("batch.line") for r in rows]
    assert sorted(line for line in lines if isinstance(line, int)) == [1, 2, 3, 4]
