"""Per-tenant limits in a real Redis: token buckets, the daily quota,
settling reservations, atomicity across limiters (replicas)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from headrace.local.redis_server import RedisServer, free_port
from headrace.runtime.config import RateLimitSettings
from headrace.runtime.errors import RateLimited
from services.router.rate_limits import TenantRateLimiter, connect_limiter_redis


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    connection = connect_limiter_redis(redis_server.url, timeout_s=10.0)
    yield connection
    await connection.aclose()


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


async def test_requests_per_minute_is_a_bucket_of_a_minutes_worth(client: aioredis.Redis) -> None:
    limiter, who, limits = TenantRateLimiter(client), tenant(), RateLimitSettings(requests_per_minute=3)
    for _ in range(3):
        await limiter.admit(who, limits, reserve_tokens=10)
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(who, limits, reserve_tokens=10)
    # One request comes back every 20 s.
    assert caught.value.retry_after_s is not None and 19.0 < caught.value.retry_after_s <= 20.0
    assert f"tenant {who!r} is over 3 requests per minute" in caught.value.message
    # Another tenant has its own bucket.
    await limiter.admit(tenant(), limits, reserve_tokens=10)


async def test_tokens_per_minute_reserves_then_settles(client: aioredis.Redis) -> None:
    limiter, who, limits = TenantRateLimiter(client), tenant(), RateLimitSettings(tokens_per_minute=100)
    first = await limiter.admit(who, limits, reserve_tokens=60)
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(who, limits, reserve_tokens=60)
    # 40 left, 60 needed: 20 tokens at 100/min.
    assert caught.value.retry_after_s is not None and 11.0 < caught.value.retry_after_s <= 12.0
    assert first is not None
    # It used only 10 of its 60: the 50 come back.
    await limiter.settle(first, used_tokens=10)
    second = await limiter.admit(who, limits, reserve_tokens=60)
    assert second is not None
    # Used far more than reserved: the bucket goes into debt, later requests wait.
    await limiter.settle(second, used_tokens=200)
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(who, limits, reserve_tokens=1)
    assert caught.value.retry_after_s is not None and caught.value.retry_after_s > 60.0


async def test_a_request_larger_than_the_bucket_waits_for_a_full_one(client: aioredis.Redis) -> None:
    limiter, who, limits = TenantRateLimiter(client), tenant(), RateLimitSettings(tokens_per_minute=100)
    assert await limiter.admit(who, limits, reserve_tokens=500) is not None
    with pytest.raises(RateLimited):
        await limiter.admit(who, limits, reserve_tokens=1)


async def test_the_daily_quota(client: aioredis.Redis) -> None:
    limiter, who, limits = TenantRateLimiter(client), tenant(), RateLimitSettings(tokens_per_day=100)
    first = await limiter.admit(who, limits, reserve_tokens=70)
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(who, limits, reserve_tokens=40)
    assert "a daily quota of 100 tokens (70 used today, this request may use 40)" in caught.value.message
    # Until midnight UTC.
    assert caught.value.retry_after_s is not None and 0 < caught.value.retry_after_s <= 86400
    assert first is not None
    await limiter.settle(first, used_tokens=20)
    await limiter.admit(who, limits, reserve_tokens=40)


async def test_no_limits_costs_no_redis_call(client: aioredis.Redis) -> None:
    limiter, who = TenantRateLimiter(client, key_prefix=f"p-{uuid.uuid4().hex}"), tenant()
    assert await limiter.admit(who, RateLimitSettings(), reserve_tokens=10**9) is None
    assert await client.keys("p-*") == []


async def test_limits_hold_across_limiters_under_concurrency(redis_server: RedisServer) -> None:
    """Two routers, 40 requests at once: exactly the bucket's 10 get through."""
    # Generous timeouts: 40 connections opening at once on a loaded box can
    # pass the production 0.5 s, and the limiter then admits (fails open),
    # which is not what this test is about.
    clients = [connect_limiter_redis(redis_server.url, timeout_s=10.0) for _ in range(2)]
    limiters = [TenantRateLimiter(c) for c in clients]
    who, limits = tenant(), RateLimitSettings(requests_per_minute=10)

    async def attempt(index: int) -> bool:
        try:
            await limiters[index % 2].admit(who, limits, reserve_tokens=1)
        except RateLimited:
            return False
        return True

    admitted = await asyncio.gather(*(attempt(i) for i in range(40)))
    for connection in clients:
        await connection.aclose()
    assert sum(admitted) == 10


async def test_an_unreachable_redis_admits_rather_than_fails() -> None:
    unreachable = connect_limiter_redis(f"redis://127.0.0.1:{free_port()}/0")
    limiter = TenantRateLimiter(unreachable)
    assert await limiter.admit(tenant(), RateLimitSettings(requests_per_minute=1), reserve_tokens=1) is None
    await unreachable.aclose()
