"""Prometheus metrics of the HTTP gateway (served with the router's on /metrics)."""

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "headrace_http_requests_total", "HTTP requests answered, by route and status", ["route", "method", "status"]
)
LATENCY = Histogram(
    "headrace_http_request_seconds",
    "Time to the response's headers (streams: to their first delta)",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
ERRORS = Counter("headrace_http_errors_total", "Error answers, by error class", ["type"])
STREAMS_ENDED = Counter(
    "headrace_http_streams_total",
    "Streams (SSE and WebSocket) by how they ended: completed, failed, disconnected, stalled",
    ["transport", "outcome"],
)
