"""build_tracer_provider: with no collector, spans are not recorded (they
would go nowhere) and trace context still propagates, ids included. (With a collector:
tests/integration/test_tracing.py.)"""

from __future__ import annotations

from opentelemetry import propagate

from headrace.runtime.config import TelemetrySettings
from headrace.runtime.telemetry import build_tracer_provider

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
