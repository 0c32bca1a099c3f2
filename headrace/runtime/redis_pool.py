"""Async Redis clients on a bounded pool that makes callers wait for a free
connection, instead of failing them.

redis-py's default pool (100 connections since 6.x) raises
MaxConnectionsError ("Too many connections") the moment one more command
runs concurrently. A batch consumer runs up to max_inflight_rows (256) rows
at once, each with its own store calls, so under full load chunks failed
with it and went back to the queue for a retry with backoff (seen in
bench-batch). Redis serves one command at a time anyway: a few dozen
connections carry any load, and a caller past them should wait its turn,
within a bound, not fail."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis


def pooled_redis(url: str, *, max_connections: int, wait_s: float | None, **connection_kwargs: Any) -> aioredis.Redis:
    """A client whose commands share at most max_connections connections; a
    command that finds none free waits up to wait_s (None: as long as it
    takes), then raises redis's ConnectionError("No connection available.")
    like a Redis that cannot be reached. connection_kwargs (timeouts,
    retry) apply to every connection."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=wait_s, **connection_kwargs
    )
    # from_pool: closing the client closes its pool too.
    return aioredis.Redis.from_pool(pool)
