"""Replica liveness through heartbeats in a real Redis: replicas see each
other, a clean stop leaves at once, a killed one (no more beats) leaves
when its key expires, and a replica that cannot reach Redis keeps its view."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import redis.asyncio as aioredis

from headrace.local.redis_server import RedisServer
from services.scheduler.replica_set import ReplicaSet

TTL_S = 0.6


async def wait_live(replica: ReplicaSet, expected: tuple[str, ...], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while replica.live != expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{replica.replica_id} sees {replica.live}, not {expected}")
        await asyncio.sleep(0.02)


async def test_replicas_see_each_other_and_the_survivors_take_a_dead_ones_share(redis_server: RedisServer) -> None:
    redis = aioredis.Redis.from_url(redis_server.url)
    prefix = f"test:{time.monotonic_ns()}:"
    changes: list[int] = []
    a = ReplicaSet(redis, replica_id="a:1", ttl_s=TTL_S, key_prefix=prefix, on_change=lambda: changes.append(1))
    b = ReplicaSet(redis, replica_id="b:1", ttl_s=TTL_S, key_prefix=prefix)
    c = ReplicaSet(redis, replica_id="c:1", ttl_s=TTL_S, key_prefix=prefix)
    try:
        await a.start()
        await b.start()
        # c beats once and never again: killed right after.
        await c.beat()
        for replica in (a, b, c):
            await wait_live(replica, ("a:1", "b:1", "c:1"))
        assert sum(r.of("gen-0", 9) for r in (a, b, c)) == 9
        assert changes, "a grew its view: its dispatcher was told"

        # c beats no more: its key expires after the TTL.
        await wait_live(a, ("a:1", "b:1"))
        await wait_live(b, ("a:1", "b:1"))
        assert a.of("gen-0", 9) + b.of("gen-0", 9) == 9

        # b stops cleanly: gone at once (its key deleted), not after the TTL.
        await b.close()
        assert not await redis.exists(f"{prefix}replica:b:1")
        await wait_live(a, ("a:1",))
        assert a.of("gen-0", 9) == 9
    finally:
        await a.close()
        await redis.aclose()


async def test_a_replica_that_cannot_reach_redis_keeps_its_view(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=False)
    server.start()
    redis = aioredis.Redis.from_url(server.url, socket_connect_timeout=0.2, socket_timeout=0.2)
    other = ReplicaSet(redis, replica_id="o:1", ttl_s=5.0)
    replica = ReplicaSet(redis, replica_id="r:1", ttl_s=5.0)
    try:
        await other.beat()
        await replica.beat()
        assert replica.live == ("o:1", "r:1")
        server.kill()
        await replica.beat()
        # It does not grow its share on a guess.
        assert replica.live == ("o:1", "r:1")
        assert replica.of("gen-0", 8) == 4
    finally:
        server.kill()
        await redis.aclose()


async def test_a_replica_that_cannot_reach_redis_at_its_start_assumes_every_configured_replica_alive() -> None:
    broken = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2, socket_timeout=0.2)
    replica = ReplicaSet(broken, replica_id="b:1", ttl_s=5.0, expected=["a:1", "b:1", "c:1"])
    try:
        await replica.beat()
        assert replica.live == ("a:1", "b:1", "c:1")
        assert replica.of("gen-0", 9) == 3
    finally:
        await broken.aclose()
