"""Routing decisions on the trace: the router's span says which version
was decided and why, what fallbacks there were, each retry or fallback as
an event, and what finally served the answer."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from headrace.local.redis_server import RedisServer
from tests.support.mesh import start_mesh
from tests.support.routing import ask, routing_settings, synthetic


async def test_route_decisions_are_on_the_trace(redis_server: RedisServer) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = routing_settings(
        redis_server.url,
        pools={"gone": {"engine": synthetic(), "workers": 0}, "gen": {"engine": synthetic()}},
        models={
            "tm": {"default_version": "1", "versions": {"1": {"pool": "gone"}}},
            "tb": {"default_version": "1", "versions": {"1": {"pool": "gen"}}},
        },
        default_model="tm",
        routing={"fallbacks": {"tm": ["tb"]}},
    )
    mesh = await start_mesh(settings, tracer_provider=provider)
    try:
        exporter.clear()
        answer = await mesh.router_stub().Generate(ask("tm"))
        assert answer.model == "tb@1"
    finally:
        await mesh.close()
    router = next(s for s in exporter.get_finished_spans() if s.name == "/headrace.v1.Router/Generate")
    attributes = dict(router.attributes or {})
    assert attributes["headrace.route.reason"] == "default"
    assert attributes["headrace.route.model_version"] == "tm@1"
    assert list(attributes["headrace.route.fallbacks"]) == ["tb@1"]  # type: ignore[arg-type]
    events = {event.name: dict(event.attributes or {}) for event in router.events}
    assert events["headrace.fallback"]["headrace.model_version"] == "tm@1"
    # What finally served it, and why, as the answer's metadata says too.
    assert attributes["headrace.route.served_version"] == answer.route.model_version == "tb@1"
    assert attributes["headrace.route.served_reason"] == answer.route.reason == "default,fallback:tm@1"
