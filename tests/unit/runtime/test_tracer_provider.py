"""build_tracer_provider: with no collector, spans are not recorded (they
would go nowhere) and trace context still propagates, ids included, through
the spans the services make themselves; the per-call instrumentation is
left out (records_spans). (With a collector: tests/integration/test_tracing.py.)"""

from __future__ import annotations

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider

from headrace.runtime.config import TelemetrySettings
from headrace.runtime.telemetry import build_tracer_provider, records_spans

PARENT = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


def test_without_a_collector_spans_are_not_recorded_and_context_propagates() -> None:
    tracer = build_tracer_provider("test", TelemetrySettings()).get_tracer("test")
    with tracer.start_as_current_span("hop", context=propagate.extract(PARENT)) as span:
        assert not span.is_recording()
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
    assert carrier["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    with tracer.start_as_current_span("root") as root:
        assert root.get_span_context().trace_id != 0  # a new trace still gets an id


def test_the_per_call_instrumentation_runs_only_where_spans_are_recorded() -> None:
    # Without a collector the gRPC servers and the gateway leave OTel's
    # instrumentation out (70-140 us of CPU per call for nothing).
    assert not records_spans(build_tracer_provider("test", TelemetrySettings()))
    exporting = build_tracer_provider("test", TelemetrySettings(otlp_endpoint="http://127.0.0.1:4317"))
    assert records_spans(exporting)
    exporting.shutdown()
    assert records_spans(TracerProvider())  # a test's own, recording in memory
    assert not records_spans(None) and not records_spans(trace.NoOpTracerProvider())
