"""Prometheus metrics of routing decisions: which path, arm or canary side
each request took, how each arm did, retries, breakers and reloads. Label
values come from the config (routes, arms, models) and worker ids, so
their number is bounded."""

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

DECISIONS = Counter(
    "headrace_router_routing_decisions_total",
    "Routing choices: policy (fast_accurate:<alias>, ab:<experiment>, canary:<model>) and its choice",
    ["policy", "choice"],
)
CASCADE = Counter("headrace_router_cascade_total", "Cascaded fast answers: kept or escalated", ["route", "outcome"])
ARM_REQUESTS = Counter(
    "headrace_router_arm_requests_total", "Requests per split arm, by outcome", ["policy", "arm", "outcome"]
)
ARM_TTFT = Histogram(
    "headrace_router_arm_ttft_seconds", "Time to first token per split arm", ["policy", "arm"], buckets=_LATENCY_BUCKETS
)
ARM_LATENCY = Histogram(
    "headrace_router_arm_latency_seconds",
    "Whole-answer latency per split arm",
    ["policy", "arm"],
    buckets=_LATENCY_BUCKETS,
)
ARM_TOKENS = Counter(
    "headrace_router_arm_completion_tokens_total", "Completion tokens per split arm", ["policy", "arm"]
)
ARM_COST = Counter("headrace_router_arm_cost_usd_total", "Cost per split arm, USD", ["policy", "arm"])
RETRIES = Counter("headrace_router_retries_total", "Retries before the first token, by kind", ["model", "kind"])
RETRY_DENIED = Counter(
    "headrace_router_retries_denied_total", "Retries not made, by why (budget, attempts, nothing left)", ["reason"]
)
BREAKER_TRANSITIONS = Counter(
    "headrace_router_circuit_transitions_total", "Circuit breaker state changes", ["kind", "to"]
)
BREAKER_STATE = Gauge(
    "headrace_router_circuit_state", "Circuit breaker state (0 closed, 1 open, 2 half-open)", ["kind", "key"]
)
CANARY_SHARE = Gauge("headrace_router_canary_share", "Share of a model's traffic its canary gets", ["model", "version"])
CANARY_TRANSITIONS = Counter(
    "headrace_router_canary_transitions_total", "Canary steps, rollbacks and promotions", ["model", "version", "to"]
)
CONFIG_RELOADS = Counter("headrace_router_config_reloads_total", "Config reloads, by outcome", ["outcome"])
STATE_ERRORS = Counter("headrace_router_routing_state_errors_total", "Failed reads/writes of routing state", ["op"])
