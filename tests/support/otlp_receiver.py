"""A real OTLP/gRPC trace receiver for tests: the collector's TraceService
(from opentelemetry-proto) on a loopback port, keeping what it is sent, so
a test sees spans exactly as a collector would, after the exporter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.sdk.trace import TracerProvider

from headrace.runtime.config import TelemetrySettings
from headrace.runtime.telemetry import build_tracer_provider


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    # "" for a root span.
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    events: tuple[str, ...]
    # OTLP status code: 0 unset, 1 ok, 2 error.
    status: int


def _value(value: common_pb2.AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, which) if which else None


@dataclass
class _Collected(trace_service_pb2_grpc.TraceServiceServicer):
    spans: list[ReceivedSpan] = field(default_factory=list)

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            service=str(resource.get("service.name", "")),
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            events=tuple(e.name for e in span.events),
                            status=span.status.code,
                        )
                    )
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """Started by `otlp_receiver()`; `provider(service)` makes a tracer
    provider that exports here the way a deployed service does."""

    def __init__(self, server: grpc.Server, collected: _Collected, port: int) -> None:
        self._server = server
        self._collected = collected
        self.endpoint = f"127.0.0.1:{port}"
        self._providers: list[TracerProvider] = []

    def provider(self, service: str) -> TracerProvider:
        provider = build_tracer_provider(service, TelemetrySettings(otlp_endpoint=self.endpoint))
        self._providers.append(provider)
        return provider

    def flush(self) -> None:
        for provider in self._providers:
            provider.force_flush()

    async def trace(self, trace_id: str, *, until: set[str], timeout_s: float = 10.0) -> list[ReceivedSpan]:
        """The spans of one trace, once every name in `until` has arrived
        (spans end, and so are exported, after the answer was sent)."""
        deadline = time.monotonic() + timeout_s
        while True:
            await asyncio.to_thread(self.flush)
            spans = [s for s in self._collected.spans if s.trace_id == trace_id]
            if until <= {s.name for s in spans} or time.monotonic() > deadline:
                return spans
            await asyncio.sleep(0.05)

    def clear(self) -> None:
        self._collected.spans.clear()

    def shutdown(self) -> None:
        for provider in self._providers:
            provider.shutdown()
        self._server.stop(0)


@contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    # A sync server on its own threads: the exporter (also sync) calls it
    # from its worker thread while the test's loop is busy serving the mesh.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    collected = _Collected()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collected, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    receiver = OtlpReceiver(server, collected, port)
    try:
        yield receiver
    finally:
        receiver.shutdown()


class SpanTree:
    """The spans of one trace, by name and by parent."""

    def __init__(self, spans: list[ReceivedSpan]) -> None:
        self.spans = spans

    def named(self, name: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name]

    def one(self, name: str) -> ReceivedSpan:
        found = self.named(name)
        assert len(found) == 1, f"expected one {name!r} span, got {len(found)}: {self.names()}"
        return found[0]

    def children(self, parent: ReceivedSpan) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.parent_span_id == parent.span_id]

    def names(self) -> list[str]:
        return sorted(s.name for s in self.spans)
