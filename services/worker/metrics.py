"""Prometheus metrics of a worker."""

from prometheus_client import Counter, Gauge

REQUESTS_IN_FLIGHT = Gauge("headrace_worker_requests_in_flight", "Generate calls being served")
TOKENS = Counter("headrace_worker_generated_tokens_total", "Completion tokens generated")
