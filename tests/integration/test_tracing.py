"""W3C trace context crosses every hop: one trace from the caller through
the router to the scheduler, the cache and the worker."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from headrace.local.redis_server import RedisServer
from tests.integration.test_mesh_grpc import greedy, mesh_settings
from tests.support.mesh import start_mesh

CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"


async def test_one_trace_spans_router_scheduler_cache_and_worker(redis_server: RedisServer) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    mesh = await start_mesh(mesh_settings(redis_server.url), tracer_provider=provider)
    try:
        exporter.clear()
        traceparent = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"
        chunks = [
            c
            async for c in mesh.router_stub().GenerateStream(
                greedy("trace me", max_tokens=3), metadata=(("traceparent", traceparent),)
            )
        ]
        assert len(chunks) == 3
    finally:
        await mesh.close()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    router = spans["/headrace.v1.Router/GenerateStream"]
    for name in (
        "/headrace.v1.Router/GenerateStream",
        "/headrace.v1.Scheduler/Place",
        "/headrace.v1.Cache/Lookup",
        "/headrace.v1.Worker/Generate",
    ):
        assert format(spans[name].context.trace_id, "032x") == CALLER_TRACE_ID, name
    assert router.parent is not None and router.context is not None
    assert format(router.parent.span_id, "016x") == CALLER_SPAN_ID
    for child in ("/headrace.v1.Worker/Generate", "/headrace.v1.Scheduler/Place"):
        parent = spans[child].parent
        assert parent is not None and parent.span_id == router.context.span_id, child
