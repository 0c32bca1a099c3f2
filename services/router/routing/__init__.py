"""The router's routing layer: which model version serves a request, and
what happens when that goes wrong.

    registry.py        routes per alias, canaries, fallbacks: built from the config, swapped on reload
    reload.py          re-read HEADRACE_CONFIG (file watch, SIGHUP, ReloadConfig RPC); a bad file is rejected
    policies/          RoutingPolicy (one async signature): fast_accurate, ab_split, canary
    canary.py          canary state in Redis (shared by replicas), step judging, rollback and promotion
    arm_stats.py       per-arm counters and TTFT histograms in Redis
    attempts.py        one request's attempts: other workers, fallback models, budget, backoff, breakers
    circuit_breaker.py per worker and per model version
    retry_budget.py    token bucket and backoff
    cascade.py         the check a fast answer must pass
    layer.py           the facade the generation flow talks to: decide, plan, report

Nothing here knows gRPC: the flow hands in a RoutingRequest and gets a
RouteDecision back.
"""
