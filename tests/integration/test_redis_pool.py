"""Redis clients under more concurrent commands than they have connections
(real Redis): callers wait their turn instead of failing with redis-py's
MaxConnectionsError, which failed whole batch chunks under full load."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from headrace.batch.store import open_redis, open_redis_for_requests
from headrace.local.redis_server import RedisServer
from headrace.runtime.redis_pool import pooled_redis

# Well past redis-py's default pool of 100: each BLPOP holds its connection
# for its whole timeout, so every one of them is in flight at once.
CONCURRENT = 300


async def _blocking_pops(client: object, count: int, key: str) -> list[object]:
    return await asyncio.gather(*(client.blpop([key], timeout=0.05) for _ in range(count)))  # type: ignore[attr-defined]


@pytest.mark.parametrize("opener", ["consumer", "requests"])
async def test_more_concurrent_commands_than_connections_all_succeed(redis_server: RedisServer, opener: str) -> None:
    client = (
        open_redis(redis_server.url)
        if opener == "consumer"
        else open_redis_for_requests(redis_server.url, timeout_s=10)
    )
    observer = pooled_redis(redis_server.url, max_connections=1, wait_s=None)
    try:
        before = (await observer.info("clients"))["connected_clients"]
        pops = asyncio.ensure_future(_blocking_pops(client, CONCURRENT, f"pool-test-{opener}"))
        peak = before
        while not pops.done():
            peak = max(peak, (await observer.info("clients"))["connected_clients"])
            await asyncio.sleep(0.01)
        assert await pops == [None] * CONCURRENT
        # Bounded: the pops took turns on the pool's connections.
        max_connections = client.connection_pool.max_connections
        assert max_connections < CONCURRENT
        assert 0 < peak - before <= max_connections
    finally:
        await client.aclose()
        await observer.aclose()


async def test_a_caller_past_the_pool_waits_its_bound_then_gets_a_connection_error(redis_server: RedisServer) -> None:
    client = pooled_redis(redis_server.url, max_connections=1, wait_s=0.2)
    try:
        holder: asyncio.Future[object] = asyncio.ensure_future(client.blpop(["pool-test-held"], timeout=2))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(RedisConnectionError, match="No connection available"):
            await client.ping()
        assert time.monotonic() - started < 1.5
        assert await holder is None
        assert await client.ping() is True  # the connection is free again
    finally:
        await client.aclose()
