"""Tracing (OpenTelemetry, W3C trace context on every hop), logging with
the request id on every line, and the Prometheus endpoint of a service."""

from __future__ import annotations

import logging
import sys
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import start_http_server

from headrace.runtime.config import TelemetrySettings
from headrace.runtime.request_context import request_id_var


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get() or "-"
        return True


# HTTP clients that log every request they make at INFO ("HTTP Request:
# POST ..."): one line per upstream call of the openai engine. Shown only
# at DEBUG, as DEBUG; requests are counted in metrics, not logged.
PER_REQUEST_LOGGERS: Final = ("httpx2", "httpx")


class _PerRequestToDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def configure_logging(service: str, level: str) -> None:
    for name in PER_REQUEST_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _PerRequestToDebug) for f in logger.filters):
            logger.addFilter(_PerRequestToDebug())
        # They follow the level asked for here, whatever a library imported
        # earlier set on them (their lines are DEBUG now, shown at DEBUG).
        logger.setLevel(logging.NOTSET)
        logger.disabled = False
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s [%(request_id)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


# The request id on every span, so a trace can be found from the id a
# client was given (x-request-id) and the other way round.
REQUEST_ID_ATTRIBUTE: Final = "headrace.request_id"


class RequestIdSpanProcessor(SpanProcessor):
    """Puts the current request id on each span as it starts. Server spans
    start before the request id is known (the tracing interceptor and the
    ASGI middleware run first): `note_request_id` covers those."""

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        request_id = request_id_var.get()
        if request_id:
            span.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)


def note_request_id(request_id: str) -> None:
    """Put the request id on the current (server) span."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)


def build_tracer_provider(service: str, settings: TelemetrySettings) -> TracerProvider:
    """A tracer provider for one service; spans go to the OTLP collector when
    one is configured. Without one they are not recorded at all (a span
    recorded for nowhere cost ~13 us of CPU more, several per hop), and the
    per-call instrumentation is left out too (records_spans)."""
    sampler = None if settings.otlp_endpoint else ALWAYS_OFF
    provider = TracerProvider(resource=Resource.create({"service.name": service}), sampler=sampler)
    provider.add_span_processor(RequestIdSpanProcessor())
    if settings.otlp_endpoint:
        # Imported here: the exporter pulls in its own gRPC client stack.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=True))
        )
    return provider


def records_spans(provider: trace.TracerProvider | None) -> bool:
    """Whether spans of `provider` are recorded, so worth instrumenting every
    call for. OTel's gRPC server interceptor cost ~70-140 us of CPU per
    call even for spans never recorded (one gRPC unary call is ~175-200 us
    without it), several calls per request; so without a collector the
    services' gRPC servers and the HTTP gateway run without it, and a
    caller's `traceparent` is not carried further (there is nowhere it
    would be joined). The request id always travels."""
    if provider is None or isinstance(provider, trace.NoOpTracerProvider):
        return False
    return getattr(provider, "sampler", None) is not ALWAYS_OFF


def start_metrics_server(host: str, port: int | None) -> int | None:
    """Serve /metrics for Prometheus; returns the bound port (None: disabled)."""
    if port is None:
        return None
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)
