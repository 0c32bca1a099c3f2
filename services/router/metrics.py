"""Prometheus metrics of the router: requests, latency, tokens and cost per tenant."""

from prometheus_client import Counter, Histogram

from headrace.v1 import generation_pb2

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

TTFT = Histogram("headrace_router_ttft_seconds", "Time to first token", ["model"], buckets=_LATENCY_BUCKETS)
TPOT = Histogram(
    "headrace_router_tpot_seconds",
    "Time per output token after the first (decode pace a client sees), per answer with two or more tokens",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0),
)
CACHE_OUTCOMES = Counter(
    "headrace_router_cache_total",
    "How answers were served, HTTP and gRPC alike: hit-exact, hit-semantic, miss, bypass (the cache was skipped)",
    ["outcome"],
)
CACHE_ERRORS = Counter("headrace_router_cache_errors_total", "Failed cache calls", ["op", "code"])
PROMPT_TOKENS = Counter("headrace_prompt_tokens_total", "Prompt tokens", ["tenant", "model"])
COMPLETION_TOKENS = Counter("headrace_completion_tokens_total", "Completion tokens", ["tenant", "model"])
ENGINE_SECONDS = Counter("headrace_engine_seconds_total", "Engine time charged", ["tenant", "model"])
COST_USD = Counter("headrace_cost_usd_total", "Cost of answers, USD", ["tenant", "model"])
PLACED_AHEAD = Counter(
    "headrace_router_placements_ahead_total",
    "First placements made while the cache was asked, by how they ended: used (a miss streamed on it), "
    "given_back (a hit answered instead), busy (no slot free then: placed again, queueing, after a miss), "
    "failed (no worker, or another error)",
    ["outcome"],
)
ANSWERS = Counter(
    "headrace_router_answers_total",
    "Answers served (engine or cache), HTTP and gRPC, by tenant and the model version that served them",
    ["tenant", "model"],
)

# Label values in the words of the x-headrace-cache header (which says
# "miss" for a bypass too; the metric keeps bypass apart, to tell a cold
# cache from requests that may not use it).
_CACHE_WORDS = {
    generation_pb2.CACHE_OUTCOME_HIT_EXACT: "hit-exact",
    generation_pb2.CACHE_OUTCOME_HIT_SEMANTIC: "hit-semantic",
    generation_pb2.CACHE_OUTCOME_MISS: "miss",
    generation_pb2.CACHE_OUTCOME_BYPASS: "bypass",
}


def count_answer(tenant: str, model: str, outcome: generation_pb2.CacheOutcome.ValueType) -> None:
    """An answer started reaching its client: how it was served, and for whom."""
    CACHE_OUTCOMES.labels(outcome=_CACHE_WORDS.get(outcome, "miss")).inc()
    ANSWERS.labels(tenant=tenant, model=model).inc()
