"""Prometheus metrics of the scheduler."""

from prometheus_client import Counter, Gauge, Histogram

PLACEMENTS = Counter("headrace_scheduler_placements_total", "Requests placed on a worker", ["pool", "policy"])
AFFINITY = Counter(
    "headrace_scheduler_affinity_total",
    "Affinity policy decisions: home (the key's own worker), spill (moved on: full or over the load bound), "
    "no_key (no prefix or session to follow)",
    ["policy", "outcome"],
)
REJECTIONS = Counter(
    "headrace_scheduler_rejections_total",
    "Place calls that got no lease, by reason: queue_full, evicted (pushed out by more important or fairer "
    "work), deadline, max_wait, cancelled, no_worker",
    ["pool", "priority", "reason"],
)
QUEUE_DEPTH = Gauge("headrace_scheduler_queue_depth", "Requests waiting for a slot", ["pool", "priority"])
QUEUE_WAIT = Histogram(
    "headrace_scheduler_queue_wait_seconds",
    "Time from Place to a lease, for placed requests",
    ["pool", "priority"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
SLOTS = Gauge("headrace_scheduler_slots", "Sequences the pool's workers can hold now (slot limits summed)", ["pool"])
LEASED = Gauge("headrace_scheduler_leased", "Leases held now", ["pool"])
WORKERS_DROPPED = Counter("headrace_scheduler_workers_dropped_total", "Workers dropped for stale reports")
LEASES_EXPIRED = Counter("headrace_scheduler_lease_expiries_total", "Leases that expired unreleased", ["pool"])
WORKERS = Gauge("headrace_scheduler_workers", "Workers reporting in")
REPLICAS = Gauge("headrace_scheduler_replicas_live", "Scheduler replicas alive, as this replica sees them")
DESIRED_WORKERS = Gauge(
    "headrace_scheduler_desired_workers",
    "Workers the pool should have (the autoscaler's decision; the configured count when autoscaling is off). "
    "Actuators follow it: headrace up, KEDA's Prometheus trigger, compose --scale",
    ["pool"],
)
AUTOSCALE_CHANGES = Counter(
    "headrace_scheduler_autoscale_changes_total", "Times the desired worker count of a pool changed", ["pool"]
)
POOL_CHOICES = Counter(
    "headrace_scheduler_pool_choices_total",
    "Requests for a version served by several pools, by the pool chosen and why: cheapest, spill (a cheaper "
    "pool's queue would break its SLO), soonest (every pool's would), batch-cheapest",
    ["pool", "reason"],
)
