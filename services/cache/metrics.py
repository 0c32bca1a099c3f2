"""Prometheus metrics of the cache service."""

from prometheus_client import Counter

LOOKUPS = Counter("headrace_cache_lookups_total", "Cache lookups by outcome", ["outcome"])
STORES = Counter("headrace_cache_stores_total", "Answers stored")
