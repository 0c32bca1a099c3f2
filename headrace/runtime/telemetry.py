"""Tracing (OpenTelemetry, W3C trace context on every hop), logging with
the request id on every line, and the Prometheus endpoint of a service."""

from __future__ import annotations

import logging
import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import start_http_server

from headrace.runtime.config import TelemetrySettings
from headrace.runtime.request_context import request_id_var


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get() or "-"
        return True


def configure_logging(service: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s [%(request_id)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def build_tracer_provider(service: str, settings: TelemetrySettings) -> TracerProvider:
    """A tracer provider for one service; spans go to the OTLP collector when
    one is configured, and nowhere otherwise (context still propagates)."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if settings.otlp_endpoint:
        # Imported here: the exporter pulls in its own gRPC client stack.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=True))
        )
    return provider


def start_metrics_server(host: str, port: int | None) -> int | None:
    """Serve /metrics for Prometheus; returns the bound port (None: disabled)."""
    if port is None:
        return None
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)
