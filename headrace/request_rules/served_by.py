"""How an answer was served, as the x-headrace-* headers (HTTP) and
metadata (gRPC) every answer carries."""

from __future__ import annotations

from headrace.runtime.request_context import REQUEST_ID_KEY
from headrace.v1 import generation_pb2

MODEL_KEY = "x-headrace-model"
ROUTE_KEY = "x-headrace-route"
CACHE_KEY = "x-headrace-cache"
# A semantic hit's similarity and the cache verifier's verdict on it:
# "0.9412; verdict=lexical:accept".
CACHE_SIMILARITY_KEY = "x-headrace-cache-similarity"
DEPRECATION_KEY = "x-headrace-deprecation"

# The promised values are hit-exact, hit-semantic and miss: a request that
# skipped the cache was not served from it, so it reads "miss".
_CACHE_VALUES = {
    generation_pb2.CACHE_OUTCOME_HIT_EXACT: "hit-exact",
    generation_pb2.CACHE_OUTCOME_HIT_SEMANTIC: "hit-semantic",
}


def cache_header_value(outcome: generation_pb2.CacheOutcome.ValueType) -> str:
    return _CACHE_VALUES.get(outcome, "miss")


def cache_similarity_value(route: generation_pb2.RouteInfo) -> str:
    value = f"{route.cache_similarity:.4f}"
    return f"{value}; verdict={route.cache_verdict}" if route.cache_verdict else value


def served_by_headers(request_id: str, route: generation_pb2.RouteInfo) -> list[tuple[str, str]]:
    headers = [
        (REQUEST_ID_KEY, request_id),
        (MODEL_KEY, route.model_version),
        (ROUTE_KEY, route.reason),
        (CACHE_KEY, cache_header_value(route.cache)),
    ]
    if route.cache == generation_pb2.CACHE_OUTCOME_HIT_SEMANTIC:
        headers.append((CACHE_SIMILARITY_KEY, cache_similarity_value(route)))
    if route.deprecation:
        headers.append((DEPRECATION_KEY, route.deprecation))
    return headers
