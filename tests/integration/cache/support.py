"""The cache service in the test's process: real gRPC on loopback, a real
Redis (its own database, flushed per test), the real MiniLM model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc.aio
import redis.asyncio as aioredis

from headrace.runtime.config import Settings
from headrace.v1 import cache_pb2, cache_pb2_grpc, generation_pb2
from services.cache.__main__ import CacheApp, build_cache
from services.cache.embedder import TextEncoder

# Database 0 belongs to the mesh tests.
CACHE_DB = 5


def cache_redis_url(redis_url: str) -> str:
    return redis_url.rsplit("/", 1)[0] + f"/{CACHE_DB}"


@dataclass
class RunningCache:
    app: CacheApp
    stub: cache_pb2_grpc.CacheStub
    channel: grpc.aio.Channel
    redis: aioredis.Redis

    async def close(self) -> None:
        await self.channel.close()
        await self.app.host.stop(0.2)
        await self.app.close()
        await self.redis.aclose()


async def start_cache(redis_url: str, encoder: TextEncoder | None, **semantic: Any) -> RunningCache:
    """Semantic hits served ("serve": "on") and a generous embedding budget
    unless the test says otherwise: these tests check the mechanics, not
    the calibration's verdict or the behaviour of a saturated model on a
    busy test host."""
    semantic = {"enabled": encoder is not None, "serve": "on", "lookup_embed_budget_ms": 30_000, **semantic}
    settings = Settings(redis_url=redis_url, cache={"metrics_port": None, "semantic": semantic})
    client = aioredis.Redis.from_url(redis_url)
    app = build_cache(settings, client, encoder=encoder, port=0)
    await app.start()
    port = await app.host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return RunningCache(app=app, stub=cache_pb2_grpc.CacheStub(channel), channel=channel, redis=client)


def ask(
    text: str, *, system: str | None = None, tags: tuple[str, ...] = (), **policy: Any
) -> generation_pb2.GenerateRequest:
    messages = [generation_pb2.ChatMessage(role="system", content=system)] if system else []
    messages.append(generation_pb2.ChatMessage(role="user", content=text))
    return generation_pb2.GenerateRequest(
        messages=messages,
        sampling=generation_pb2.SamplingParams(temperature=0.0, max_tokens=32),
        cache=generation_pb2.CachePolicy(**policy),
        tags=tags,
    )


def answer(text: str) -> generation_pb2.GenerateResponse:
    return generation_pb2.GenerateResponse(text=text, token_ids=[1, 2], finish_reason=generation_pb2.FINISH_REASON_STOP)


async def store(
    cache: RunningCache,
    tenant: str,
    version: str,
    request: generation_pb2.GenerateRequest,
    text: str,
    *,
    request_age_s: float = 0.0,
) -> cache_pb2.CacheStoreResponse:
    reply: cache_pb2.CacheStoreResponse = await cache.stub.Store(
        cache_pb2.CacheStoreRequest(
            tenant=tenant,
            model_version=version,
            request=request,
            response=answer(text),
            deltas=[cache_pb2.CachedDelta(text=text, token_ids=[1, 2])],
            request_age_s=request_age_s,
        )
    )
    return reply


async def lookup(
    cache: RunningCache, tenant: str, version: str, request: generation_pb2.GenerateRequest
) -> cache_pb2.CacheLookupResponse:
    reply: cache_pb2.CacheLookupResponse = await cache.stub.Lookup(
        cache_pb2.CacheLookupRequest(tenant=tenant, model_version=version, request=request)
    )
    return reply
