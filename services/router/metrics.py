"""Prometheus metrics of the router: requests, latency, tokens and cost per tenant."""

from prometheus_client import Counter, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

TTFT = Histogram("headrace_router_ttft_seconds", "Time to first token", ["model"], buckets=_LATENCY_BUCKETS)
CACHE_OUTCOMES = Counter("headrace_router_cache_total", "How answers were served", ["outcome"])
CACHE_ERRORS = Counter("headrace_router_cache_errors_total", "Failed cache calls", ["op", "code"])
PROMPT_TOKENS = Counter("headrace_prompt_tokens_total", "Prompt tokens", ["tenant", "model"])
COMPLETION_TOKENS = Counter("headrace_completion_tokens_total", "Completion tokens", ["tenant", "model"])
ENGINE_SECONDS = Counter("headrace_engine_seconds_total", "Engine time charged", ["tenant", "model"])
COST_USD = Counter("headrace_cost_usd_total", "Cost of answers, USD", ["tenant", "model"])
