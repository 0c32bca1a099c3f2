"""Prometheus metrics of the cache service."""

from prometheus_client import Counter, Gauge, Histogram

LOOKUPS = Counter("headrace_cache_lookups_total", "Cache lookups by outcome", ["outcome"])
LOOKUP_SECONDS = Histogram(
    "headrace_cache_lookup_seconds",
    "Time to answer a lookup, by outcome",
    ["outcome"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
SEMANTIC_SIMILARITY = Histogram(
    "headrace_cache_semantic_similarity",
    "Best similarity found by a semantic lookup in its context, by result",
    ["result"],
    buckets=(0.5, 0.6, 0.7, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98, 0.99, 1.0),
)
SEMANTIC_SKIPPED = Counter(
    "headrace_cache_semantic_skipped_total", "Lookups or stores that skipped the semantic cache, by reason", ["reason"]
)
STORES = Counter("headrace_cache_stores_total", "Answers stored")
STORES_REFUSED = Counter("headrace_cache_stores_refused_total", "Answers not stored, by reason", ["reason"])
INVALIDATED = Counter("headrace_cache_invalidated_total", "Entries dropped by Invalidate")
EMBEDDINGS = Counter("headrace_cache_embeddings_total", "Embeddings served, by source", ["source"])
INDEXED = Gauge("headrace_cache_semantic_entries", "Entries in this replica's semantic index")
VERDICTS = Counter(
    "headrace_cache_semantic_verdicts_total",
    "The verifier's verdicts on semantic candidates above the threshold",
    ["verdict"],
)
