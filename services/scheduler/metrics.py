"""Prometheus metrics of the scheduler."""

from prometheus_client import Counter, Gauge

PLACEMENTS = Counter("headrace_scheduler_placements_total", "Requests placed on a worker", ["policy"])
WORKERS_DROPPED = Counter("headrace_scheduler_workers_dropped_total", "Workers dropped for stale reports")
LEASES_EXPIRED = Counter("headrace_scheduler_lease_expiries_total", "Leases that expired unreleased")
WORKERS = Gauge("headrace_scheduler_workers", "Workers reporting in")
