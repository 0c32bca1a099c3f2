"""Prometheus metrics of a worker."""

from prometheus_client import Counter, Gauge

REQUESTS_IN_FLIGHT = Gauge("headrace_worker_requests_in_flight", "Generate calls being served")
TOKENS = Counter("headrace_worker_generated_tokens_total", "Completion tokens generated")
BUSY_SECONDS = Counter(
    "headrace_worker_busy_seconds_total",
    "Engine busy time (one or more sequences in it): the worker-seconds the requests' engine seconds add up to",
)
PREEMPTIONS = Counter("headrace_worker_batch_preemptions_total", "Batch rows stopped to make room for online requests")
